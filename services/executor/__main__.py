"""``python -m services.executor``: run one executor process until SIGTERM or SIGINT, then drain and exit."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from pydantic import ValidationError
from pydantic_settings import SettingsError

from services.common import eventloop
from services.common.logs import setup_logging
from services.common.telemetry import setup_tracing, shutdown_tracing
from services.executor.bootstrap import build
from services.executor.settings import SERVICE_NAME, ExecutorSettings

log = logging.getLogger("services.executor")


async def serve(settings: ExecutorSettings) -> None:
    """Start the app, wait for a stop signal, stop the app."""
    app = build(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        await stop.wait()
        log.info("stop signal received; draining")
    finally:
        await app.stop()


def main() -> int:
    try:
        settings = ExecutorSettings()
    except ValidationError as exc:
        # Name each bad setting without echoing its value: credentials are secrets.
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        print(f"{SERVICE_NAME}: invalid settings:\n" + "\n".join(lines), file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"{SERVICE_NAME}: invalid settings: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.service, settings.log_level)
    setup_tracing(settings.service, settings.otlp_endpoint)
    try:
        eventloop.run(serve(settings))
    except Exception:
        log.exception("executor failed")
        return 1
    finally:
        shutdown_tracing()
    return 0


if __name__ == "__main__":
    sys.exit(main())
