"""Gateway benchmark per protocol: accepted tasks per second over HTTP/1.1, HTTP/2, WebSocket and MQTT 5, and
open WebSocket connections held per GiB of gateway memory.

Method: the platform runs as local processes (the launcher, private namespace, free ports) with the gateway's h2c
listener and MQTT ingress on (the machine's Mosquitto), the per-tenant rate limit off. "Accepted" is what the
gateway answers once RabbitMQ has confirmed the persistent task: HTTP 202, a WebSocket `task` frame, an MQTT reply
with status ok. Each protocol runs closed-loop senders at --concurrency for --seconds after a 2 s warm-up, each
submitting a one-step workflow and waiting for that acceptance only (the executor works meanwhile and is not what is
measured). HTTP/1.1 uses aiohttp (one connection per sender), HTTP/2 one httpx h2c connection multiplexing every
sender, WebSocket one connection per sender, MQTT one client whose requests carry a Response Topic and Correlation
Data. Then --connections idle authenticated WebSocket connections are opened and the gateway's resident memory
(VmRSS from /proc) is read before and after: connections per GiB = connections / growth. Everything (clients
included) shares this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import aiomqtt
import httpx
import websockets
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from openclaw.launcher import LocalStack, StackConfig, ensure_local_services, free_port
from services.gateway.auth import mint_token

WORKFLOW = {"name": "bench", "steps": [{"type": "math_sum", "params": {"items": [1, 2]}}]}


async def closed_loop(
    name: str, once: Callable[[], Awaitable[bool]], concurrency: int, seconds: float
) -> float:
    """Accepted per second over the measured window (warm-up excluded)."""
    done = 0
    errors = 0
    measuring = False
    stop_at = time.monotonic() + 2.0

    async def sender() -> None:
        nonlocal done, errors
        while time.monotonic() < stop_at:
            ok = await once()
            if measuring:
                done += ok
                errors += not ok

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    measuring = True
    began = time.monotonic()
    stop_at = began + seconds
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    rate = done / (time.monotonic() - began)
    print(f"  {name:<9} {rate:8.1f} accepted tasks/s  (errors {errors})", flush=True)
    return rate


async def http1(base: str, headers: dict[str, str], concurrency: int, seconds: float) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def once() -> bool:
            async with session.post(f"{base}/v1/tasks", json={"workflow": WORKFLOW}, headers=headers) as r:
                await r.read()
                return r.status == 202

        return await closed_loop("http/1.1", once, concurrency, seconds)


async def http2(base: str, headers: dict[str, str], concurrency: int, seconds: float) -> float:
    async with httpx.AsyncClient(
        http1=False, http2=True, base_url=base, headers=headers, timeout=60
    ) as client:

        async def once() -> bool:
            response = await client.post("/v1/tasks", json={"workflow": WORKFLOW})
            return response.status_code == 202

        return await closed_loop("http/2", once, concurrency, seconds)


async def websocket(url: str, token: str, concurrency: int, seconds: float) -> float:
    sockets = [
        await websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"})
        for _ in range(concurrency)
    ]
    for ws in sockets:
        await ws.recv()  # ready
    free = asyncio.Queue[websockets.ClientConnection]()
    for ws in sockets:
        free.put_nowait(ws)

    async def once() -> bool:
        ws = await free.get()
        try:
            await ws.send(
                json.dumps({"type": "submit", "id": uuid.uuid4().hex, "task": {"workflow": WORKFLOW}})
            )
            return bool(json.loads(await ws.recv()).get("type") == "task")
        finally:
            free.put_nowait(ws)

    try:
        return await closed_loop("websocket", once, concurrency, seconds)
    finally:
        for ws in sockets:
            await ws.close()


async def mqtt(token: str, tenant: str, concurrency: int, seconds: float) -> float:
    replies = f"bench/replies/{uuid.uuid4().hex}"
    waiting: dict[bytes, asyncio.Future[bool]] = {}
    async with aiomqtt.Client("127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(replies, qos=1)

        async def listen() -> None:
            async for message in client.messages:
                props = message.properties
                key = getattr(props, "CorrelationData", b"") if props is not None else b""
                future = waiting.pop(key, None)
                if future is not None and not future.done():
                    future.set_result("task" in json.loads(message.payload))

        listener = asyncio.create_task(listen())

        async def once() -> bool:
            key = uuid.uuid4().bytes
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = replies
            props.CorrelationData = key
            props.UserProperty = [("authorization", f"Bearer {token}")]
            future = waiting[key] = asyncio.get_running_loop().create_future()
            await client.publish(
                f"openclaw/{tenant}/tasks/submit",
                json.dumps({"task": {"workflow": WORKFLOW}}),
                qos=1,
                properties=props,
            )
            try:
                return await asyncio.wait_for(future, 30)
            except TimeoutError:
                waiting.pop(key, None)
                return False

        try:
            return await closed_loop("mqtt", once, concurrency, seconds)
        finally:
            listener.cancel()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def connections_per_gib(url: str, token: str, pid: int, count: int) -> float:
    before = rss_bytes(pid)
    sockets = []
    for i in range(count):
        ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"})
        await ws.recv()
        sockets.append(ws)
        if (i + 1) % 500 == 0:
            print(f"  {i + 1} WebSocket connections open", flush=True)
    await asyncio.sleep(1.0)
    grown = max(1, rss_bytes(pid) - before)
    for ws in sockets:
        await ws.close()
    per_gib = count / (grown / 2**30)
    print(
        f"  {count} idle WebSocket connections: gateway RSS +{grown / 2**20:.1f} MiB → {per_gib:,.0f} per GiB"
    )
    return per_gib


async def run(args: argparse.Namespace, stack: LocalStack, h2_port: int) -> dict[str, float]:
    cfg = stack.config
    token = mint_token(cfg.jwt_secret, tenant="bench", ttl_s=3600, issuer="openclaw", audience="openclaw-api")
    headers = {"Authorization": f"Bearer {token}"}
    ws_url = cfg.gateway_url.replace("http://", "ws://") + "/v1/ws"
    results = {
        "http/1.1": await http1(cfg.gateway_url, headers, args.concurrency, args.seconds),
        "http/2": await http2(f"http://127.0.0.1:{h2_port}", headers, args.concurrency, args.seconds),
        "websocket": await websocket(ws_url, token, args.concurrency, args.seconds),
        "mqtt": await mqtt(token, "bench", args.concurrency, args.seconds),
    }
    pid = next(p.popen.pid for p in stack._procs if p.name == "gateway")
    results["ws_connections_per_gib"] = await connections_per_gib(ws_url, token, pid, args.connections)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--out", default="bench/results/gateway_protocols.json")
    args = parser.parse_args()
    ensure_local_services()
    tmp = tempfile.mkdtemp(prefix="openclaw-bench-gw-")
    config = StackConfig.isolated(f"benchg{uuid.uuid4().hex[:6]}", f"{tmp}/log", f"{tmp}/storage")
    h2_port = free_port()
    config.extra_env = {
        "OPENCLAW_LOG_LEVEL": "warning",
        "OPENCLAW_RATE_LIMIT_ENABLED": "false",
        "OPENCLAW_GATEWAY_HTTP2_PORT": str(h2_port),
        "OPENCLAW_GATEWAY_MQTT_URL": "mqtt://127.0.0.1:1883",
        "OPENCLAW_GATEWAY_MQTT_SHARE_GROUP": f"bench{uuid.uuid4().hex[:6]}",
        "OPENCLAW_GATEWAY_WS_MAX_MESSAGES_PER_SECOND": "100000",
    }
    stack = LocalStack(config)
    print(f"starting the platform; logs in {tmp}/log", flush=True)
    stack.start(progress=True)
    try:
        results = asyncio.run(run(args, stack, h2_port))
    finally:
        stack.stop()
        asyncio.run(asyncio.to_thread(stack.purge))
    print("\n| protocol | accepted tasks/s |\n|---|---|")
    for name in ("http/1.1", "http/2", "websocket", "mqtt"):
        print(f"| {name} | {results[name]:.0f} |")
    print(f"\nidle WebSocket connections per GiB of gateway memory: {results['ws_connections_per_gib']:,.0f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "args": vars(args)}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
