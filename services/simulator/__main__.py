"""``python -m services.simulator [--host H] [--port P] [--config FILE] [--seed N]``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from pydantic import ValidationError

from services.simulator.app import serve
from services.simulator.behaviour import BehaviourError
from services.simulator.settings import SimulatorSettings


def main(argv: list[str] | None = None) -> int:
    """Read flags over ``OPENCLAW_SIMULATOR_*`` settings, serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m services.simulator",
        description="OpenClaw provider simulator: OpenAI and Anthropic wire formats, simulated replies.",
    )
    parser.add_argument("--host", help="address to bind (env OPENCLAW_SIMULATOR_HOST, default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help="port, 0 for any free one (env OPENCLAW_SIMULATOR_PORT, default 8090)"
    )
    parser.add_argument(
        "--config", type=Path, help="YAML file of per-model behaviours (env OPENCLAW_SIMULATOR_CONFIG)"
    )
    parser.add_argument(
        "--seed", type=int, help="seed of the error_rate generators (env OPENCLAW_SIMULATOR_SEED)"
    )
    args = parser.parse_args(argv)
    overrides = {name: value for name, value in vars(args).items() if value is not None}
    try:
        settings = SimulatorSettings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            print(
                f"simulator: --{field} / OPENCLAW_SIMULATOR_{field.upper()}: {error['msg']}", file=sys.stderr
            )
        return 2
    try:
        asyncio.run(serve(settings))
    except BehaviourError as exc:
        print(f"simulator: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"simulator: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
