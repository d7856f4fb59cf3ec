"""``python -m services.router``: serve the router until SIGTERM or SIGINT, then drain and exit."""

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
from services.router.bootstrap import RouterApp, build
from services.router.registry import ModelConfigError
from services.router.settings import RouterSettings

SERVICE_NAME = "openclaw-router"
log = logging.getLogger("services.router")


async def serve(app: RouterApp) -> None:
    """Start, wait for a stop signal, drain within the settings' grace period."""
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping", extra={"grace_s": app.settings.drain_seconds})
    await app.stop(app.settings.drain_seconds)


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '?'}: {err['msg']}" for err in exc.errors())


def main() -> int:
    """Entry point; returns the process exit code (2 for bad configuration)."""
    try:
        settings = RouterSettings()  # type: ignore[call-arg]
    except ValidationError as exc:
        print(f"{SERVICE_NAME}: bad settings: {_describe(exc)}", file=sys.stderr)
        return 2
    setup_logging(SERVICE_NAME, settings.log_level)
    try:
        app = build(settings)
    except ModelConfigError as exc:
        log.error("bad model table: %s", exc.message)
        return 2
    except (InvalidInputError, ValueError) as exc:  # the model catalogue file, the master keys
        log.error("bad configuration: %s", exc)
        return 2
    setup_tracing(SERVICE_NAME, settings.otlp_endpoint)
    try:
        eventloop.run(serve(app))
    except RuntimeError as exc:
        log.error("router failed: %s", exc)
        return 1
    finally:
        shutdown_tracing()
    return 0


if __name__ == "__main__":
    sys.exit(main())
