"""`openclaw demo`: steady, varied traffic against a running gateway, so the dashboards and traces have something to
show. Each second it submits a few workflows (an LLM step, a data pipeline, one that fails on purpose, one that
retries) and a chat completion, then waits for them; it prints what it sent and what came back."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections import Counter
from typing import Any

import aiohttp

WORKFLOWS: list[tuple[str, dict[str, Any]]] = [
    (
        "summarise",
        {
            "name": "demo-summarise",
            "steps": [
                {
                    "id": "text",
                    "type": "text_template",
                    "params": {"template": "Order {{ n }} shipped late twice."},
                },
                {
                    "id": "summary",
                    "type": "llm_call",
                    "params": {"model": "gpt-4-mini", "prompt": "Summarise"},
                },
            ],
        },
    ),
    (
        "data",
        {
            "name": "demo-data",
            "steps": [
                {
                    "id": "rows",
                    "type": "csv_parse",
                    "params": {"text": "city,temp\nParis,12\nOslo,-3\nRome,17\n"},
                },
                {"id": "hot", "type": "list_filter", "params": {"expression": "to_number(temp) > `10`"}},
                {"id": "count", "type": "json_transform", "params": {"expression": "length(@)"}},
            ],
        },
    ),
    (
        "fails",
        {
            "name": "demo-fails",
            "steps": [{"type": "json_parse", "params": {"text": "{not json"}}],
        },
    ),
]


async def _submit(session: aiohttp.ClientSession, base: str, kind: str, workflow: dict[str, Any]) -> str:
    doc = {"workflow": workflow, "inputs": {}}
    if kind == "summarise":
        doc["workflow"] = {
            **workflow,
            "steps": [
                {
                    **workflow["steps"][0],
                    "params": {"template": f"Order {random.randint(1000, 9999)} shipped late."},
                },
                workflow["steps"][1],
            ],
        }
    async with session.post(f"{base}/v1/tasks", json=doc) as response:
        if response.status != 202:
            return f"rejected {response.status}"
        task_id = (await response.json())["id"]
    async with session.get(f"{base}/v1/tasks/{task_id}", params={"wait": "30"}) as response:
        return str((await response.json()).get("status", "unknown"))


async def _chat(session: aiohttp.ClientSession, base: str) -> str:
    body = {
        "model": random.choice(["gpt-4-mini", "claude-3", "llama-3"]),
        "messages": [{"role": "user", "content": "hi"}],
    }
    async with session.post(f"{base}/v1/chat/completions", json=body) as response:
        await response.read()
        return "chat ok" if response.status == 200 else f"chat {response.status}"


async def run(base: str, token: str, seconds: float, rate: float) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as session:
        pending: set[asyncio.Task[str]] = set()
        end = time.monotonic() + seconds
        next_report = time.monotonic() + 5
        while time.monotonic() < end:
            for _ in range(max(1, int(rate))):
                kind, workflow = random.choice(WORKFLOWS)
                pending.add(asyncio.create_task(_submit(session, base, kind, workflow)))
            pending.add(asyncio.create_task(_chat(session, base)))
            await asyncio.sleep(1.0)
            done = {t for t in pending if t.done()}
            for task in done:
                outcomes[task.result() if not task.exception() else f"error: {task.exception()!r}"[:60]] += 1
            pending -= done
            if time.monotonic() >= next_report:
                print("  " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())), flush=True)
                next_report += 5
        for finished in asyncio.as_completed(pending):
            try:
                outcomes[await finished] += 1
            except Exception as exc:
                outcomes[f"error: {exc!r}"[:60]] += 1
    return outcomes


def main(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("OPENCLAW_TOKEN", "")
    if not token:
        from openclaw.cli import DEV_SECRET, _mint

        token = _mint(os.environ.get("OPENCLAW_JWT_SECRET") or DEV_SECRET, "demo", 3600, "demo", ["operator"])
    print(f"demo traffic against {args.gateway} for {args.seconds:.0f} s (Ctrl-C stops it)", flush=True)
    try:
        outcomes = asyncio.run(run(args.gateway.rstrip("/"), token, args.seconds, args.rate))
    except KeyboardInterrupt:
        return 130
    print("done: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    return 0


def add_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="steady demo traffic against a gateway (for the dashboards)")
    demo.add_argument("--gateway", default=os.environ.get("OPENCLAW_GATEWAY_URL", "http://localhost:8080"))
    demo.add_argument("--token", help="bearer token (default: $OPENCLAW_TOKEN or a development token)")
    demo.add_argument("--seconds", type=float, default=300.0)
    demo.add_argument("--rate", type=float, default=3.0, help="workflows submitted per second")
    demo.set_defaults(func=main)
