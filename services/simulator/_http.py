"""What the simulated wire formats share: reading a body, pacing a request and playing a stream."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from aiohttp import web

from services.simulator.behaviour import Behaviour, BehaviourTable, Fault, Stats, play
from services.simulator.jsonbody import parse_json

MAX_INT32 = 2**31 - 1
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
NDJSON_HEADERS = {"Content-Type": "application/x-ndjson"}

encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """data as a compact JSON answer."""
    return web.Response(
        status=status, body=encode(data).encode(), content_type="application/json", headers=headers
    )


def break_off(request: web.Request) -> None:
    """Close the socket mid-body: the chunked stream stays unterminated and the client sees an error."""
    if request.transport is not None:
        request.transport.close()


async def read_json(request: web.Request) -> dict[str, Any] | str:
    """The request body as a JSON object, or a sentence saying what is wrong with it."""
    try:
        body = parse_json(await request.read())
    except ValueError as exc:
        return str(exc)
    if not isinstance(body, dict):
        return f"request body must be a JSON object, got {type(body).__name__}"
    return body


def int_in(body: dict[str, Any], name: str, high: int) -> bool:
    """Absent, or an integer from 1 to high."""
    value = body.get(name)
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= high)


def number_in(body: dict[str, Any], name: str, high: float) -> bool:
    """Absent, or a number from 0 to high (compared as is: float() would overflow on a huge integer)."""
    value = body.get(name)
    return value is None or (
        isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= high
    )


class ModelRoutes:
    """Handlers bound to the behaviour table and the stats."""

    def __init__(self, behaviours: BehaviourTable, stats: Stats) -> None:
        self._behaviours = behaviours
        self._stats = stats
        self._ids = itertools.count(1)

    def _bad_request(self, body: dict[str, Any] | str) -> None:
        """Count a request refused as malformed, under its model if it names one."""
        model = body.get("model") if isinstance(body, dict) else None
        self._stats.record(model if isinstance(model, str) and model else "-", "bad_request")

    async def _decide(self, model: str, prompt_tokens: int = 0) -> tuple[Behaviour, Fault | None]:
        """The model's behaviour, after its latency; a fault to inject is counted here."""
        behaviour, fault = self._behaviours.decide(model, prompt_tokens)
        if behaviour.latency_ms:
            await asyncio.sleep(behaviour.latency_ms / 1000)
        if fault is not None:
            self._stats.record(model, fault.kind)
        return behaviour, fault

    async def _stream(
        self,
        request: web.Request,
        model: str,
        lines: list[bytes],
        behaviour: Behaviour,
        headers: dict[str, str] = SSE_HEADERS,
    ) -> web.StreamResponse:
        """Play SSE events (or NDJSON lines) as the behaviour paces (or breaks) them, and count the outcome."""
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        try:
            complete = await play(response, lines, behaviour)
        except ConnectionResetError:
            self._stats.record(model, "client_gone")
            return response
        if not complete:
            break_off(request)
        self._stats.record(model, "ok" if complete else "stream_broken")
        return response
