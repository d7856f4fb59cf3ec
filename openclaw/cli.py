"""The `openclaw` command: run the platform locally, mint development tokens, list the operations and
templates, and submit, read, watch, signal and cancel tasks through the gateway."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openclaw import dlq
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


def cmd_templates(args: argparse.Namespace) -> int:
    """List the template library, or show one template's parameters, examples and steps."""
    from services.common.errors import NotFoundError
    from services.executor.templates import get_template, list_templates

    if args.action == "list":
        shown = [get_template(name) for name in list_templates()]
        if args.json:
            print(json.dumps([{"name": t.name, "description": t.description} for t in shown], indent=2))
            return 0
        width = max((len(t.name) for t in shown), default=0)
        for template in shown:
            print(f"{template.name:<{width}}  {template.description}")
        print(f"{len(shown)} templates", file=sys.stderr)
        return 0
    try:
        template = get_template(args.name)
    except NotFoundError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(template.describe(), indent=2, ensure_ascii=False))
    return 0


class GatewayError(Exception):
    """The gateway refused a call (its error message), or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class GatewayClient:
    """The task API over HTTP, as the CLI uses it."""

    def __init__(self, url: str, token: str, timeout_s: float = 30.0) -> None:
        import httpx

        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s
        )

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The JSON answer of a call; GatewayError with the gateway's message on any error status."""
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise GatewayError(f"cannot reach the gateway at {self._http.base_url}: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            message = error.get("message") if isinstance(error, dict) else response.text[:500]
            raise GatewayError(f"{response.status_code}: {message}", response.status_code)
        return body if isinstance(body, dict) else {"body": body}

    def wait(self, task_id: str, timeout_s: float, steps: bool = False) -> dict[str, Any]:
        """The task once it ended, or as it is when timeout_s has passed (long polls, no busy loop)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = max(0.0, deadline - time.monotonic())
            wait = max(1, int(min(left, 30))) if left > 0 else 0  # whole seconds: never a busy loop
            params = {"wait": str(wait), "steps": "true" if steps else "false"}
            task = self.call("GET", f"/v1/tasks/{task_id}", params=params)
            if task.get("status") in _ENDED or left <= 0:
                return task

    def events(self, task_id: str) -> Any:
        """The task's events as dicts, until its terminal event (Server-Sent Events)."""
        import httpx

        try:
            with self._http.stream("GET", f"/v1/tasks/{task_id}/events", timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    error = response.json().get("error", {})
                    raise GatewayError(
                        f"{response.status_code}: {error.get('message')}", response.status_code
                    )
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        yield json.loads(line[5:].strip())
        except httpx.HTTPError as exc:
            raise GatewayError(f"the event stream broke: {exc}") from exc


_ENDED = ("succeeded", "failed", "cancelled")


def _inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Inputs from --inputs (a JSON file, or - for stdin) then each --input name=value (JSON, else text)."""
    out: dict[str, Any] = {}
    if args.inputs:
        text = sys.stdin.read() if args.inputs == "-" else Path(args.inputs).read_text(encoding="utf-8")
        loaded = json.loads(text)
        if not isinstance(loaded, dict):
            raise ValueError(f"--inputs {args.inputs}: must hold a JSON object")
        out.update(loaded)
    for item in args.input or ():
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--input {item!r}: expected name=value")
        try:
            out[name] = json.loads(raw)
        except ValueError:
            out[name] = raw  # plain text needs no JSON quotes on the command line
    return out


def cmd_tasks(args: argparse.Namespace) -> int:
    """Submit, read, watch, signal or cancel tasks through the gateway's HTTP API."""
    token = args.token or os.environ.get("OPENCLAW_TOKEN", "")
    if not token:
        print(
            "error: no token: pass --token or set OPENCLAW_TOKEN (`openclaw token --tenant ...`)",
            file=sys.stderr,
        )
        return 2
    client = GatewayClient(args.gateway, token)
    try:
        return _tasks(args, client)
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if 400 <= exc.status < 500 else 1
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()


def _tasks(args: argparse.Namespace, client: GatewayClient) -> int:
    if args.action == "submit":
        body: dict[str, Any] = {"inputs": _inputs(args)}
        if args.template:
            body["template"] = args.template
        else:
            body["workflow"] = json.loads(Path(args.workflow).read_text(encoding="utf-8"))
        if args.deadline is not None:
            body["deadline_seconds"] = args.deadline
        headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
        task = client.call("POST", "/v1/tasks", json=body, headers=headers)
        if args.wait:
            task = client.wait(task["id"], args.timeout, steps=args.steps)
        return _print_task(task)
    if args.action == "get":
        if args.wait:
            return _print_task(client.wait(args.id, args.timeout, steps=args.steps))
        params = {"steps": "true" if args.steps else "false"}
        return _print_task(client.call("GET", f"/v1/tasks/{args.id}", params=params))
    if args.action == "cancel":
        return _print_task(client.call("POST", f"/v1/tasks/{args.id}/cancel"))
    if args.action == "signal":
        payload = json.loads(args.payload) if args.payload is not None else None
        return _print_task(client.call("POST", f"/v1/tasks/{args.id}/signals/{args.name}", json=payload))
    status = ""
    for event in client.events(args.id):
        print(json.dumps(event, ensure_ascii=False), flush=True)
        status = event.get("status") or status
    return 0 if status in ("succeeded", "") else 1


def _print_task(task: dict[str, Any]) -> int:
    print(json.dumps(task, indent=2, ensure_ascii=False))
    return 1 if task.get("status") in ("failed", "cancelled") else 0


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
    from openclaw import demo

    demo.add_parser(sub)
    _add_templates(sub)
    _add_tasks(sub)
    dlq.register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # `openclaw ops list | head`: the reader left; stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _add_templates(sub: Any) -> None:
    templates = sub.add_parser("templates", help="the template library: list, show one")
    actions = templates.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every template with its description")
    listing.add_argument("--json", action="store_true")
    show = actions.add_parser("show", help="one template's parameter schema, examples, steps and outputs")
    show.add_argument("name")
    templates.set_defaults(func=cmd_templates)


def _add_tasks(sub: Any) -> None:
    tasks = sub.add_parser("tasks", help="submit, read, watch and cancel tasks through the gateway")
    tasks.add_argument(
        "--gateway",
        default=os.environ.get("OPENCLAW_GATEWAY_URL", "http://127.0.0.1:8080"),
        help="the gateway's HTTP URL (default: $OPENCLAW_GATEWAY_URL or http://127.0.0.1:8080)",
    )
    tasks.add_argument("--token", help="bearer token (default: $OPENCLAW_TOKEN)")
    actions = tasks.add_subparsers(dest="action", required=True)
    submit = actions.add_parser("submit", help="submit a template with inputs, or a workflow file")
    what = submit.add_mutually_exclusive_group(required=True)
    what.add_argument("--template", help="a template's name (`openclaw templates list`)")
    what.add_argument("--workflow", help="a workflow JSON file")
    submit.add_argument(
        "--input", action="append", metavar="NAME=VALUE", help="one input; VALUE is JSON or text"
    )
    submit.add_argument("--inputs", metavar="FILE", help="a JSON object of inputs (- reads stdin)")
    submit.add_argument("--deadline", type=float, help="seconds after which the task must not start")
    submit.add_argument("--idempotency-key", help="the same key always means the same task")
    for parser in (submit, get := actions.add_parser("get", help="a task's status, result or error")):
        parser.add_argument("--wait", action="store_true", help="wait until the task ends")
        parser.add_argument("--timeout", type=float, default=300.0, help="how long --wait waits (seconds)")
        parser.add_argument("--steps", action="store_true", help="include each step's checkpoint")
    get.add_argument("id")
    watch = actions.add_parser("watch", help="print the task's events as JSON lines until it ends")
    watch.add_argument("id")
    cancel = actions.add_parser("cancel", help="cancel a queued, waiting or running task")
    cancel.add_argument("id")
    signal_ = actions.add_parser("signal", help="send a named signal (with a JSON payload) to a waiting task")
    signal_.add_argument("id")
    signal_.add_argument("name")
    signal_.add_argument("--payload", help="the signal's JSON payload (default null)")
    tasks.set_defaults(func=cmd_tasks)


if __name__ == "__main__":
    sys.exit(main())
