"""The `openclaw` command: run the platform locally, mint development tokens, list the operations."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

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


DOCS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def cmd_ops(args: argparse.Namespace) -> int:
    """List, show or document the operation catalogue (built-ins and the plugins OPENCLAW_PLUGINS enables)."""
    from services.executor import plugins
    from services.executor.ops import catalogue, reference
    from services.executor.settings import ExecutorSettings

    ops = catalogue().with_operations(*plugins.load(ExecutorSettings().plugins))
    if args.action == "list":
        listed = [r for r in reference.rows(ops) if args.category in (None, r[1])]
        if args.json:
            print(json.dumps([{"name": n, "category": c, "description": d} for n, c, d in listed], indent=2))
        else:
            width = max((len(n) for n, _, _ in listed), default=0)
            for name, category, description in listed:
                print(f"{name:<{width}}  {category:<10}  {description}")
            print(f"{len(listed)} operations", file=sys.stderr)
        return 0
    if args.action == "show":
        if args.name not in ops:
            print(f"error: no operation named {args.name!r} (see `openclaw ops list`)", file=sys.stderr)
            return 2
        print(json.dumps(ops[args.name].describe(), indent=2))
        return 0
    text = reference.markdown(catalogue())  # the docs describe the built-ins only
    if args.check:
        if not args.output.exists() or args.output.read_text() != text:
            print(f"{args.output} is stale: run `openclaw ops docs`", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output} ({len(catalogue())} operations)", file=sys.stderr)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Verify or export the audit chains in Redis (settings from OPENCLAW_* as the services read them)."""
    import asyncio

    return asyncio.run(_audit(args))


async def _audit(args: argparse.Namespace) -> int:
    from services.common.audit import AuditLog
    from services.common.redis_client import open_redis
    from services.common.settings import CommonSettings

    settings = CommonSettings()
    redis = open_redis(settings.redis_url)
    try:
        log = AuditLog(redis, settings.namespace, settings.audit_key_bytes())
        if args.action == "export":
            async for record in log.records(args.tenant):
                print(json.dumps(record, ensure_ascii=False, sort_keys=True))
            return 0
        tenants = [args.tenant] if args.tenant else await log.tenants()
        failed = 0
        for tenant in tenants:
            result = await log.verify(tenant)
            status = "ok" if result.ok else f"TAMPERED: {result.problem}"
            print(f"{tenant}: {result.records} records, {status}")
            failed += not result.ok
        if not tenants:
            print("no audit records")
        return 1 if failed else 0
    finally:
        await redis.aclose()


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
    ops = sub.add_parser("ops", help="the operation catalogue: list, show one, write docs/operations.md")
    ops_sub = ops.add_subparsers(dest="action", required=True)
    ops_list = ops_sub.add_parser("list", help="every operation with its category and description")
    ops_list.add_argument("--category")
    ops_list.add_argument("--json", action="store_true")
    ops_show = ops_sub.add_parser("show", help="one operation's description and params JSON Schema")
    ops_show.add_argument("name")
    ops_docs = ops_sub.add_parser("docs", help="regenerate docs/operations.md from the schemas")
    ops_docs.add_argument("--output", type=Path, default=DOCS)
    ops_docs.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    ops.set_defaults(func=cmd_ops)
    audit = sub.add_parser("audit", help="verify the audit chains, or export one tenant's as JSON lines")
    audit_sub = audit.add_subparsers(dest="action", required=True)
    verify = audit_sub.add_parser("verify", help="exit 1 if any record was deleted, reordered or altered")
    verify.add_argument("--tenant", help="one tenant (default: every tenant with records)")
    export = audit_sub.add_parser("export", help="one tenant's records, oldest first, as JSON lines")
    export.add_argument("--tenant", required=True)
    audit.set_defaults(func=cmd_audit)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
