"""`make up` then `make demo` / `openclaw token` works: compose's development JWT secret is the CLI's."""

from __future__ import annotations

from pathlib import Path

import yaml

from openclaw.cli import DEV_SECRET

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "compose.yaml"


def test_compose_gateway_defaults_to_the_cli_development_secret() -> None:
    gateway = yaml.safe_load(COMPOSE.read_text())["services"]["gateway"]["environment"]
    assert gateway["OPENCLAW_JWT_SECRET"] == f"${{OPENCLAW_JWT_SECRET:-{DEV_SECRET}}}"
