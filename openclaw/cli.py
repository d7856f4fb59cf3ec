"""The `openclaw` command: run the platform locally, mint development tokens."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence

from openclaw.launcher import LocalStack, StackConfig, ensure_local_services

DEV_SECRET = StackConfig.jwt_secret


def _mint(secret: str, tenant: str, ttl_s: int, subject: str, roles: Sequence[str]) -> str:
    from services.gateway.auth import mint_token

    return mint_token(
        secret,
        tenant=tenant,
        subject=subject,
        ttl_s=ttl_s,
        issuer=os.environ.get("OPENCLAW_JWT_ISSUER", "openclaw"),
        audience=os.environ.get("OPENCLAW_JWT_AUDIENCE", "openclaw-api"),
        roles=tuple(roles),
    )


def cmd_token(args: argparse.Namespace) -> int:
    """Print a development JWT for a tenant."""
    secret = args.secret or os.environ.get("OPENCLAW_JWT_SECRET") or DEV_SECRET
    print(_mint(secret, args.tenant, args.ttl, args.subject, args.role or ["admin"]))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Start simulator, router, executor(s) and gateway; stop them all on Ctrl-C or SIGTERM."""
    ensure_local_services()
    config = StackConfig(executors=args.executors, otlp_endpoint=os.environ.get("OPENCLAW_OTLP_ENDPOINT", ""))
    stack = LocalStack(config)
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        stack.start(progress=True)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        stack.stop()
        return 1
    token = _mint(config.jwt_secret, "demo", 24 * 3600, "dev", ["admin"])
    print(
        f"""
OpenClaw is running (logs in {config.log_dir}/). Models are served by the SIMULATOR until you configure real keys.

  export OPENCLAW_TOKEN={token}

  # a first task: one LLM step, then read its result
  curl -s {config.gateway_url}/v1/tasks -H "Authorization: Bearer $OPENCLAW_TOKEN" -H 'Content-Type: application/json' \\
    -d '{{"workflow": {{"name": "hello", "steps": [{{"type": "llm_call", "params": {{"model": "llama-3", "prompt": "Say hello"}}}}]}}}}'
  curl -s "{config.gateway_url}/v1/tasks/<id>?wait=10" -H "Authorization: Bearer $OPENCLAW_TOKEN"

  # OpenAI-compatible
  curl -s {config.gateway_url}/v1/chat/completions -H "Authorization: Bearer $OPENCLAW_TOKEN" \\
    -H 'Content-Type: application/json' -d '{{"model": "gpt-4-mini", "messages": [{{"role": "user", "content": "hi"}}]}}'

Ctrl-C stops everything.""",
        flush=True,
    )
    while not stopping:
        dead = stack.check_alive()
        if dead:
            print(f"error: {', '.join(dead)} exited; see {config.log_dir}/", file=sys.stderr)
            break
        time.sleep(0.5)
    print("stopping ...", flush=True)
    codes = stack.stop()
    print(", ".join(f"{name} exited {code}" for name, code in codes.items()), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `openclaw` command."""
    parser = argparse.ArgumentParser(prog="openclaw", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("token", help="mint a development JWT for a tenant")
    token.add_argument("--tenant", required=True)
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.add_argument("--subject", default="dev")
    token.add_argument("--role", action="append", help="role claim (repeatable); default admin")
    token.add_argument("--secret", help="HS256 secret (default: $OPENCLAW_JWT_SECRET or the dev secret)")
    token.set_defaults(func=cmd_token)
    run = sub.add_parser("run", help="run the whole platform as local processes")
    run.add_argument("--executors", type=int, default=1)
    run.set_defaults(func=cmd_run)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
