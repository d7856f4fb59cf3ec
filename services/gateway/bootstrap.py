"""The gateway's composition root: builds every object of the process, serves every protocol, drains on stop.

``build(settings, **overrides)`` returns a GatewayApp; ``await app.start()`` connects to Redis, RabbitMQ
and the router and binds the listeners: HTTP/1.1 + WebSocket, gRPC, and when configured HTTP/2 (h2c, TLS
1.3) and MQTT (port 0 picks a free port; the real ones are in ``http_port``, ``grpc_port``, ``http2_port``
and ``tls_port``); ``await app.stop()`` drains and closes everything. Tests pass overrides for the parts they
own; what the app opened itself it also closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import aio_pika
import grpc
from aio_pika.abc import AbstractRobustConnection
from redis.asyncio import Redis
from starlette.types import ASGIApp

from openclaw.v1 import gateway_pb2_grpc
from services.common import rpc, tls
from services.common.audit import AuditLog
from services.common.encryption import Keyring, Sealer
from services.common.envelope import SealingPublisher
from services.common.publisher import TaskPublisher
from services.common.redis_client import open_redis
from services.common.router_client import RouterClient
from services.common.taskstore import TaskStore
from services.common.tenants import TenantDirectory, load_file
from services.common.topology import Topology
from services.gateway import channels_config
from services.gateway.access import Authenticator, Gate
from services.gateway.admin_api import AdminRoutes
from services.gateway.apikeys import ApiKeyStore
from services.gateway.auth import TokenVerifier
from services.gateway.chat_runtime import ChatRuntime
from services.gateway.grpc_api import SERVICE_NAME, TaskServicer
from services.gateway.http_api import ProbeRoutes, TaskRoutes, create_app
from services.gateway.httpserver import CountProtocols, Http1Server, Http2Server, WebSocketLimits
from services.gateway.keys import JwksKeys
from services.gateway.limits import QueueShedder, RouteLimits, SlotPool
from services.gateway.metrics import REQUESTS
from services.gateway.mqtt_api import MqttIngress
from services.gateway.openai_api import ChatBackend, OpenAIRoutes
from services.gateway.ratelimit import Quota, RateLimiter
from services.gateway.settings import GatewaySettings
from services.gateway.tasks import EnvelopePublisher, TaskService, WorkflowCatalogue
from services.gateway.websocket_api import WebSocketPolicy, WebSocketRoutes

_log = logging.getLogger(__name__)
_PROBE_TIMEOUT_S = 2.0


class ExecutorCatalogue:
    """Checks workflows with the executor's own DSL parser and operation catalogue, so a task the executor
    would refuse is refused at submit time, before anything is queued."""

    def __init__(self, plugins: Mapping[str, Sequence[str]] | None = None) -> None:
        from services.executor import dsl, templates
        from services.executor.plugins import catalogue_with

        self._dsl = dsl
        # Any: mypy resolves ``services.executor.templates`` to the data folder beside templates.py.
        self._templates: Any = templates
        # The plugins the executors run are the ones submits are checked against (the same OPENCLAW_PLUGINS).
        self._ops = catalogue_with(plugins or {})
        # Callers submit the same workflows again and again with new inputs (as the executor sees them, and
        # it caches the same way): parsing a workflow text once, not per submit, is a tenth of a submit's CPU.
        self._parsed = functools.lru_cache(maxsize=256)(self._parse)

    def _parse(self, workflow_json: str) -> tuple[Any, str, frozenset[str]]:
        workflow = self._dsl.parse_workflow(workflow_json, known_ops=self._ops)
        return workflow, str(workflow.name), workflow_operations(workflow)

    def check_workflow(self, workflow_json: str, inputs: dict[str, Any]) -> tuple[str, frozenset[str]]:
        # Only small texts are kept (as in the executor), which bounds the cache's memory whatever is submitted.
        parse = self._parsed if len(workflow_json) <= self._dsl.CACHED_WORKFLOW_CHARS else self._parse
        workflow, name, operations = parse(workflow_json)
        workflow.bind_inputs(inputs)
        return name, operations

    def load_template(self, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = self._templates.load_template(name)
        return doc

    def check_template_inputs(self, name: str, inputs: dict[str, Any]) -> None:
        self._templates.validate_inputs(name, inputs)


def workflow_operations(workflow: Any) -> frozenset[str]:
    """Every operation a parsed workflow may run: in foreach bodies, parallel branches, catch blocks and
    called workflows too (control steps are not operations)."""
    from services.executor.model import walk_steps

    ops: set[str] = set()
    pending = [workflow]
    while pending:
        for step in walk_steps(pending.pop().steps):
            if step.workflow is not None:
                pending.append(step.workflow)
            if not step.is_control:
                ops.add(step.type)
            if step.agent is not None:  # an agent step runs its allow-listed tools
                ops.update(t for t in step.agent.get("tools", ()) if isinstance(t, str))
    return frozenset(ops)


class GatewayApp:
    """The running gateway: HTTP/1.1 + WebSocket (uvicorn), HTTP/2 (granian), gRPC and MQTT on one loop."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        verifier: TokenVerifier,
        catalogue: WorkflowCatalogue,
        topology: Topology,
        redis: Redis | None = None,
        amqp: AbstractRobustConnection | None = None,
        router: ChatBackend | None = None,
        publisher: EnvelopePublisher | None = None,
        sse_heartbeat_s: float = 15.0,
        jwks: JwksKeys | None = None,
    ) -> None:
        self.settings = settings
        self.tls = tls.load(settings)  # mutual TLS to the router, TLS on gRPC ingress (None when off)
        self.http_port = settings.http_port
        self.grpc_port = settings.grpc_port
        self.http2_port: int | None = None
        self.tls_port: int | None = None
        self._verifier = verifier
        self._jwks = jwks
        self._catalogue = catalogue
        self._topology = topology
        self._redis = redis
        self._amqp = amqp
        self._router = router
        self._owned: set[str] = {
            name for name, given in (("redis", redis), ("amqp", amqp), ("router", router)) if given is None
        }
        self._heartbeat_s = sse_heartbeat_s
        self._draining = False
        self._started = False
        self._publisher = publisher
        self._task_publisher: TaskPublisher | None = None
        self._tasks: TaskService | None = None
        self._asgi: ASGIApp | None = None
        self._grpc: grpc.aio.Server | None = None
        self._health: Any = None
        self._http1: Http1Server | None = None
        self._http2: Http2Server | None = None
        self._mqtt: MqttIngress | None = None
        self.gate: Gate | None = None
        self.tenants: TenantDirectory | None = None
        self._chat: ChatRuntime | None = None
        self.audit: AuditLog | None = None
        self.api_keys: ApiKeyStore | None = None
        self._slots: SlotPool | None = None
        self._shedder: QueueShedder | None = None

    @property
    def asgi_app(self) -> ASGIApp:
        """The HTTP app (server-agnostic ASGI), available after start()."""
        assert self._asgi is not None, "start() first"
        return self._asgi

    @property
    def draining(self) -> bool:
        """True once stop() has begun: /readyz answers 503 and gRPC health says NOT_SERVING."""
        return self._draining

    async def start(self) -> None:
        """Connect to Redis, RabbitMQ and the router, then serve gRPC and HTTP."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        settings = self.settings
        if self._redis is None:
            self._redis = open_redis(settings.redis_url)
        if self._amqp is None:
            self._amqp = await aio_pika.connect_robust(
                settings.amqp_url,
                client_properties={"connection_name": f"{settings.service}@{socket.gethostname()}"},
            )
        channel = await self._amqp.channel()
        await self._topology.declare(channel)
        await channel.close()
        if self._router is None:
            self._router = RouterClient(settings.router_addr, hop_name="gateway.router", tls=self.tls)
        if self._publisher is None:
            self._publisher = self._task_publisher = TaskPublisher(
                self._amqp, self._topology, timeout_s=settings.publish_timeout_seconds
            )
        # Encryption at rest (when master keys are configured): the task store and the envelopes seal task data.
        master = settings.master_key_set()
        sealer = Sealer(Keyring(self._redis, settings.namespace, master)) if master else None
        publisher: EnvelopePublisher = (
            SealingPublisher(self._publisher, sealer) if sealer else self._publisher
        )
        self._tasks = TaskService(
            TaskStore(self._redis, settings.namespace, sealer=sealer),
            publisher,
            self._catalogue,
            max_attempts=settings.task_max_attempts,
            publish_timeout_s=settings.publish_timeout_seconds,
        )
        gate = self.gate = await self._start_governance(settings, self._redis, self._amqp)
        self._chat = ChatRuntime(
            channels_config.load(settings.channels_file),
            redis=self._redis,
            namespace=settings.namespace,
            model=self._router,
            tasks=self._tasks,
            tenants=self.tenants,
            sealer=sealer,
        )
        depth = settings.max_json_depth
        self._asgi = create_app(
            [
                TaskRoutes(
                    self._tasks,
                    gate,
                    max_body_bytes=settings.max_body_bytes,
                    heartbeat_s=self._heartbeat_s,
                    max_json_depth=depth,
                ).routes(),
                OpenAIRoutes(
                    self._router, gate, max_body_bytes=settings.max_body_bytes, max_json_depth=depth
                ).routes(),
                AdminRoutes(
                    gate,
                    self.api_keys,
                    admin_token=settings.admin_token,
                    max_body_bytes=settings.max_body_bytes,
                ).routes(),
                ProbeRoutes(self.readiness).routes(),
                self._chat.routes(),
                WebSocketRoutes(
                    self._tasks,
                    self._router,
                    gate,
                    WebSocketPolicy(
                        auth_timeout_s=settings.ws_auth_timeout_seconds,
                        max_in_flight=settings.ws_max_in_flight,
                        max_messages_per_second=settings.ws_max_messages_per_second,
                        heartbeat_s=self._heartbeat_s,
                        max_json_depth=depth,
                        credential_check_s=settings.ws_credential_check_seconds,
                        token_leeway_s=settings.jwt_leeway_seconds,
                    ),
                ).routes(),
            ]
        )
        await self._start_grpc(settings)
        await self._start_http(settings)
        if settings.mqtt_url:
            self._mqtt = MqttIngress(self._tasks, gate, settings)
            await self._mqtt.start()
        await self._chat.start()
        self._started = True
        _log.info(
            "gateway serving",
            extra={
                "http_port": self.http_port,
                "grpc_port": self.grpc_port,
                "http2_port": self.http2_port,
                "tls_port": self.tls_port,
                "mqtt": bool(settings.mqtt_url),
                "namespace": settings.namespace,
            },
        )

    async def _start_governance(
        self, settings: GatewaySettings, redis: Redis, amqp: AbstractRobustConnection
    ) -> Gate:
        """Tenants, API keys, rate limits, stream slots, shedding and audit: everything the Gate checks."""
        if self._jwks is not None:
            await self._jwks.start()  # start-up fails if the key set cannot be read
        configured, default = load_file(settings.tenants_file) if settings.tenants_file else ({}, None)
        self.tenants = TenantDirectory(
            redis,
            settings.namespace,
            configured=configured,
            default=default,
            closed=settings.tenants_mode == "closed",
        )
        await self.tenants.start()
        if settings.api_keys_enabled:
            self.api_keys = ApiKeyStore(redis, settings.namespace, cache_s=settings.api_key_cache_seconds)
        if settings.audit_enabled:
            self.audit = AuditLog(redis, settings.namespace, settings.audit_key_bytes(), service="gateway")
            await self.audit.start()
        self._slots = SlotPool(redis, settings.namespace)
        await self._slots.start()
        if settings.shed_queue_depth > 0:
            self._shedder = QueueShedder(
                amqp,
                self._topology.task_queue,
                max_depth=settings.shed_queue_depth,
                interval_s=settings.shed_check_seconds,
            )
        key_quota = None
        if settings.api_key_requests_per_minute > 0:
            key_quota = Quota(settings.api_key_requests_per_minute, 60.0, settings.api_key_burst)
        return Gate(
            Authenticator(self._verifier, self.api_keys, default_roles=settings.auth_default_roles),
            self.tenants,
            limiter=RateLimiter(redis, settings.namespace) if settings.rate_limit_enabled else None,
            audit_log=self.audit,
            slots=self._slots,
            routes=RouteLimits(
                {
                    "submit": settings.max_concurrent_submits,
                    "read": settings.max_concurrent_reads,
                    "chat": settings.max_concurrent_chats,
                }
            ),
            shedder=self._shedder,
            api_key_quota=key_quota,
        )

    async def _stop_governance(self) -> None:
        if self._shedder is not None:
            await self._shedder.close()
            self._shedder = None
        if self._slots is not None:
            await self._slots.stop()
            self._slots = None
        if self.tenants is not None:
            await self.tenants.stop()
        if self.audit is not None:
            with contextlib.suppress(Exception):  # a Redis outage at shutdown must not hang the drain
                await asyncio.wait_for(self.audit.stop(), 5.0)
        if self._jwks is not None:
            await self._jwks.stop()

    async def _start_grpc(self, settings: GatewaySettings) -> None:
        assert self._tasks is not None
        assert self.gate is not None
        # No SO_REUSEPORT: a second gateway on the same port must fail, not silently share it.
        options = [
            ("grpc.so_reuseport", 0),
            # The same bound on what a client may send as HTTP's body limit (gRPC's default is 4 MiB).
            ("grpc.max_receive_message_length", settings.max_body_bytes),
        ]
        self._grpc = grpc.aio.server(options=options, interceptors=[_CountGrpcCalls()])
        gateway_pb2_grpc.add_TaskServiceServicer_to_server(
            TaskServicer(self._tasks, self.gate, max_json_depth=settings.max_json_depth), self._grpc
        )
        self._health = rpc.add_health_and_reflection(self._grpc, [SERVICE_NAME])
        host = f"[{settings.grpc_host}]" if ":" in settings.grpc_host else settings.grpc_host
        try:
            address = f"{host}:{settings.grpc_port}"
            # Clients of the ingress authenticate with API keys or tokens, not certificates: TLS only encrypts.
            self.grpc_port = (
                self._grpc.add_secure_port(
                    address, tls.server_credentials(self.tls, require_client_cert=False)
                )
                if self.tls is not None
                else self._grpc.add_insecure_port(address)
            )
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {host}:{settings.grpc_port}: {exc}") from exc
        await self._grpc.start()

    async def _start_http(self, settings: GatewaySettings) -> None:
        assert self._asgi is not None
        app = CountProtocols(self._asgi)
        ws = WebSocketLimits(
            max_message_bytes=settings.ws_max_message_bytes,
            ping_interval_s=settings.ws_ping_interval_seconds,
            ping_timeout_s=settings.ws_ping_timeout_seconds,
        )
        self._http1 = Http1Server(
            app, settings.http_host, settings.http_port, drain_s=settings.drain_seconds, ws=ws
        )
        self.http_port = self._http1.port
        await self._http1.start()
        if settings.http2_port is not None or settings.tls_port is not None:
            tls_files = None
            if settings.tls_cert_file is not None and settings.tls_key_file is not None:
                tls_files = (settings.tls_cert_file, settings.tls_key_file)
            self._http2 = Http2Server(
                app,
                settings.http_host,
                settings.http2_port,
                tls_port=settings.tls_port,
                tls_files=tls_files,
                drain_s=settings.drain_seconds,
            )
            self.http2_port, self.tls_port = self._http2.port, self._http2.tls_port
            await self._http2.start()

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Whether to send work here: Redis, RabbitMQ and the router reachable, and not draining."""
        if self._draining:
            return False, {"gateway": "draining"}

        async def redis() -> str:
            assert self._redis is not None
            await self._redis.ping()
            return "ok"

        async def rabbitmq() -> str:
            if self._amqp is None or self._amqp.is_closed:
                raise ConnectionError("connection closed")
            return "ok"

        async def router() -> str:
            assert self._router is not None
            await self._router.list_models()
            return "ok"

        names = ("redis", "rabbitmq", "router")
        results = await asyncio.gather(
            *(asyncio.wait_for(check, _PROBE_TIMEOUT_S) for check in (redis(), rabbitmq(), router())),
            return_exceptions=True,
        )
        checks = {
            name: result if isinstance(result, str) else f"error: {type(result).__name__}: {result}"
            for name, result in zip(names, results, strict=True)
        }
        # The router is reported but does not gate readiness: the task API works without it, and pulling
        # every gateway out of the Service because chat is down would take tasks down too.
        return checks["redis"] == "ok" and checks["rabbitmq"] == "ok", checks

    async def stop(self) -> None:
        """Drain: readiness 503, stop accepting, let in-flight work finish within drain_seconds, close all."""
        self._draining = True
        grace = self.settings.drain_seconds
        if self._health is not None:
            rpc.set_not_serving(self._health, [SERVICE_NAME])
        if self._tasks is not None:
            self._tasks.close()
        await asyncio.gather(self._stop_http(), self._stop_grpc(grace), self._stop_mqtt())
        if self._chat is not None:
            await self._chat.stop()
            self._chat = None
        await self._stop_governance()
        if self._task_publisher is not None:
            with contextlib.suppress(Exception):
                await self._task_publisher.close()
            self._task_publisher = self._publisher = None
        if "router" in self._owned and isinstance(self._router, RouterClient):
            await self._router.close()
            self._router = None
        if "amqp" in self._owned and self._amqp is not None:
            await self._amqp.close()
            self._amqp = None
        if "redis" in self._owned and self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._started:
            _log.info("gateway stopped")
        self._started = False

    async def _stop_http(self) -> None:
        servers = [server for server in (self._http1, self._http2) if server is not None]
        self._http1 = self._http2 = None
        await asyncio.gather(*(server.stop() for server in servers))

    async def _stop_mqtt(self) -> None:
        if self._mqtt is not None:
            await self._mqtt.stop(self.settings.drain_seconds)
            self._mqtt = None

    async def _stop_grpc(self, grace: float) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None


def build(
    settings: GatewaySettings,
    *,
    redis: Redis | None = None,
    amqp: AbstractRobustConnection | None = None,
    router: ChatBackend | None = None,
    topology: Topology | None = None,
    catalogue: WorkflowCatalogue | None = None,
    verifier: TokenVerifier | None = None,
    publisher: EnvelopePublisher | None = None,
    sse_heartbeat_s: float = 15.0,
) -> GatewayApp:
    """Build the gateway from its settings; each keyword replaces the part it names (tests)."""
    jwks = None
    if settings.jwks_url or settings.jwks_file is not None:
        source = settings.jwks_url or str(settings.jwks_file)
        jwks = JwksKeys(source, refresh_s=settings.jwks_refresh_seconds)
    if verifier is None:
        verifier = TokenVerifier(
            settings.jwt_key if settings.uses_shared_secret else None,
            jwks=jwks,
            algorithms=settings.jwt_algorithms,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway_s=settings.jwt_leeway_seconds,
        )
    if settings.uses_dev_secret:
        _log.warning(
            "OPENCLAW_ENV=dev and no OPENCLAW_JWT_SECRET: using the built-in development secret, "
            "which anyone can use to mint tokens; set OPENCLAW_JWT_SECRET outside development"
        )
    return GatewayApp(
        settings,
        verifier=verifier,
        jwks=jwks,
        catalogue=catalogue or ExecutorCatalogue(settings.plugins),
        topology=topology or Topology(settings.namespace),
        redis=redis,
        amqp=amqp,
        router=router,
        publisher=publisher,
        sse_heartbeat_s=sse_heartbeat_s,
    )


class _CountGrpcCalls(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts gRPC calls in openclaw_gateway_requests_total{protocol="grpc"}."""

    def __init__(self) -> None:
        self._count = REQUESTS.labels("grpc")

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        self._count.inc()
        return await continuation(handler_call_details)
