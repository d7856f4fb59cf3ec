"""``python -m services.gateway``: read settings, serve until SIGTERM or SIGINT, then drain and exit."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from pydantic import ValidationError

from services.common import eventloop
from services.common.errors import InvalidInputError
from services.common.logs import setup_logging
from services.common.telemetry import setup_tracing, shutdown_tracing
from services.gateway.bootstrap import build
from services.gateway.settings import GatewaySettings

_log = logging.getLogger("services.gateway")


async def serve(settings: GatewaySettings) -> None:
    """Run the gateway until a termination signal, then drain within settings.drain_seconds."""
    setup_tracing(settings.service, settings.otlp_endpoint)
    app = build(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        await stop.wait()
        _log.info("termination signal received; draining", extra={"drain_seconds": settings.drain_seconds})
    finally:
        await app.stop()
        shutdown_tracing()


def main() -> None:
    try:
        settings = GatewaySettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        print(f"openclaw-gateway: bad configuration: {problems}", file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.service, settings.log_level)
    try:
        eventloop.run(serve(settings))
    except InvalidInputError as exc:  # a configuration file that does not load (TLS, tenants, channels...)
        print(f"openclaw-gateway: bad configuration: {exc.message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
