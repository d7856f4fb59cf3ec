"""Composition root of the simulator: the aiohttp application, its control API, start, serve and stop."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from types import TracebackType
from typing import Any

from aiohttp import web

from services.simulator.anthropic_api import AnthropicRoutes
from services.simulator.behaviour import BehaviourError, BehaviourTable, Stats, load_behaviour_file
from services.simulator.cohere_api import CohereRoutes
from services.simulator.gemini_api import GeminiRoutes
from services.simulator.jsonbody import parse_json
from services.simulator.ollama_api import OllamaRoutes
from services.simulator.openai_api import OpenAIRoutes
from services.simulator.settings import SimulatorSettings

logger = logging.getLogger(__name__)

SIMULATED_HEADER = "x-openclaw-simulated"
"""Set to ``true`` on every response, errors and streams included."""
SIMULATED_MODELS = ("sim-chat", "sim-echo", "sim-embed")
"""Listed by ``GET /v1/models`` besides the configured ones; any other name is served too."""
SHUTDOWN_GRACE_S = 10.0
MAX_BODY_BYTES = 64 * 1024 * 1024

BEHAVIOURS = web.AppKey("behaviours", BehaviourTable)
STATS = web.AppKey("stats", Stats)

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_encode(data).encode(), content_type="application/json")


def _control_error(message: str, field: str | None) -> web.Response:
    return _json({"error": {"message": message, "field": field}}, status=400)


async def _label(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[SIMULATED_HEADER] = "true"


async def _healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok", "simulated": True})


class ControlRoutes:
    """The ``/_sim`` control API: read and change behaviours, read and reset stats."""

    def __init__(self, behaviours: BehaviourTable, stats: Stats) -> None:
        self._behaviours = behaviours
        self._stats = stats

    def routes(self) -> list[web.RouteDef]:
        """Behaviour and stats routes."""
        return [
            web.get("/_sim/models", self.list_behaviours),
            web.delete("/_sim/models", self.reset_all),
            web.get("/_sim/models/{model:.+}", self.get_behaviour),
            web.put("/_sim/models/{model:.+}", self.put_behaviour),
            web.delete("/_sim/models/{model:.+}", self.reset_behaviour),
            web.get("/_sim/stats", self.get_stats),
            web.post("/_sim/stats/reset", self.reset_stats),
        ]

    async def list_behaviours(self, request: web.Request) -> web.Response:
        """``GET /_sim/models``: ``*`` and every configured model with its effective behaviour."""
        return _json({"models": self._behaviours.snapshot()})

    async def get_behaviour(self, request: web.Request) -> web.Response:
        """``GET /_sim/models/{model}``: the effective behaviour of any model name."""
        model = request.match_info["model"]
        return _json({"model": model, "behaviour": self._behaviours.describe(model)})

    async def put_behaviour(self, request: web.Request) -> web.Response:
        """``PUT /_sim/models/{model}``: merge the JSON object into the model's behaviour."""
        model = request.match_info["model"]
        raw = await request.read()
        try:
            patch = parse_json(raw) if raw.strip() else {}
        except ValueError as exc:
            return _control_error(str(exc), None)
        try:
            behaviour = self._behaviours.update(model, patch)
        except BehaviourError as exc:
            return _control_error(exc.message, exc.field)
        return _json({"model": model, "behaviour": behaviour})

    async def reset_behaviour(self, request: web.Request) -> web.Response:
        """``DELETE /_sim/models/{model}``: back to the start-up behaviour."""
        model = request.match_info["model"]
        return _json({"model": model, "behaviour": self._behaviours.reset(model)})

    async def reset_all(self, request: web.Request) -> web.Response:
        """``DELETE /_sim/models``: every model back to its start-up behaviour."""
        self._behaviours.reset_all()
        return _json({"models": self._behaviours.snapshot()})

    async def get_stats(self, request: web.Request) -> web.Response:
        """``GET /_sim/stats``: requests per model and per outcome."""
        return _json(self._stats.snapshot())

    async def reset_stats(self, request: web.Request) -> web.Response:
        """``POST /_sim/stats/reset``: forget every count."""
        self._stats.reset()
        return _json(self._stats.snapshot())


def create_app(
    settings: SimulatorSettings | None = None,
    *,
    behaviours: BehaviourTable | None = None,
    stats: Stats | None = None,
) -> web.Application:
    """Build the simulator application; the behaviour file in ``settings.config`` is loaded here."""
    settings = settings if settings is not None else SimulatorSettings()
    if behaviours is None:
        initial = load_behaviour_file(settings.config) if settings.config is not None else {}
        behaviours = BehaviourTable(initial, seed=settings.seed)
    stats = stats if stats is not None else Stats()
    table = behaviours

    def models() -> list[str]:
        return list(dict.fromkeys([*SIMULATED_MODELS, *table.configured_models()]))

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[BEHAVIOURS] = behaviours
    app[STATS] = stats
    app.on_response_prepare.append(_label)
    app.router.add_get("/healthz", _healthz)
    app.add_routes(ControlRoutes(behaviours, stats).routes())
    app.add_routes(OpenAIRoutes(behaviours, stats, models).routes())
    app.add_routes(AnthropicRoutes(behaviours, stats).routes())
    app.add_routes(GeminiRoutes(behaviours, stats).routes())
    app.add_routes(OllamaRoutes(behaviours, stats).routes())
    app.add_routes(CohereRoutes(behaviours, stats).routes())
    return app


class Simulator:
    """A running simulator: where it listens, its behaviour table and stats, and how to stop it."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self.runner = runner
        self.host = host
        self.port = port

    @property
    def app(self) -> web.Application:
        """The served application."""
        return self.runner.app

    @property
    def behaviours(self) -> BehaviourTable:
        """The live behaviour table (changing it is the same as using the control API)."""
        return self.app[BEHAVIOURS]

    @property
    def stats(self) -> Stats:
        """The live request counts."""
        return self.app[STATS]

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8090`` (OpenAI clients add ``/v1``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop listening, let in-flight requests finish within the grace period, release the port."""
        await self.runner.cleanup()

    async def __aenter__(self) -> Simulator:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def start(
    settings: SimulatorSettings | None = None, *, app: web.Application | None = None
) -> Simulator:
    """Serve the simulator on ``settings.host:settings.port`` (port 0 picks a free one) and return it."""
    settings = settings if settings is not None else SimulatorSettings()
    app = app if app is not None else create_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = int(runner.addresses[0][1])
    return Simulator(runner, settings.host, port)


async def serve(settings: SimulatorSettings) -> None:
    """Run until SIGINT or SIGTERM, then stop within ``SHUTDOWN_GRACE_S``."""
    simulator = await start(settings)
    logger.info("provider simulator listening on %s", simulator.url)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        logger.info("provider simulator stopping")
        await simulator.stop()
