"""The AMQP side of the executor: consume task envelopes, run them with the engine, settle each delivery once.

Every delivery ends in exactly one ``settle`` call (``delivery.py``): ack once the outcome is stored in Redis
(and any retry or dead-letter copy, published by ``outcomes.py``, is confirmed by RabbitMQ). A delivery that
cannot be run now (Redis or RabbitMQ unavailable, the worker stopping, the task running elsewhere under a live
lease, kept by ``lease.py``) is put back: a copy goes to a delay queue and the delivery is acked, so it does
not count toward the quorum queue's delivery limit; only if that copy cannot be published is the delivery
requeued. Poison messages (undecodable, or any unexpected error) are copied to the dead queue with the reason
and acked, and their task fails with it. A delivery redelivered nearly up to the delivery limit (a crash loop)
is not run again: its task fails with that reason and it is dead-lettered, instead of silently by RabbitMQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    ConsumerTag,
)
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from openclaw.v1 import tasks_pb2
from services.common import envelope, telemetry
from services.common.encryption import DecryptionError
from services.common.envelope import now_ms
from services.common.errors import (
    BreakerOpenError,
    InvalidInputError,
    NotFoundError,
    OpenClawError,
    PermissionDeniedError,
    UnavailableError,
)
from services.common.hop import Hop
from services.common.identifiers import check_task_id, check_tenant
from services.common.publisher import TaskPublisher
from services.common.taskstore import TaskStore
from services.common.topology import TASK_ROUTING_KEY, Topology
from services.common.waits import WaitStore
from services.executor import metrics
from services.executor.context import RunState
from services.executor.delivery import BROKER_HEADERS, Disposition, copy_delivery, delivery_count, settle
from services.executor.dsl import CACHED_WORKFLOW_CHARS, Workflow, parse_workflow
from services.executor.engine import Engine, StepFailed, WorkflowCancelled, WorkflowParked
from services.executor.governance import Governance
from services.executor.journal import RedisCalls, TaskJournal, step_started_data
from services.executor.lease import Leases
from services.executor.outcomes import Outcomes, cancelled
from services.executor.templates import load_template
from services.executor.waker import Waker

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("openclaw.executor")
TASK_TYPE = "workflow.run"
# Redis or RabbitMQ out of reach: the delivery is put back for later, the task's attempt is not spent.
_INFRA_ERRORS: tuple[type[BaseException], ...] = (
    UnavailableError,
    BreakerOpenError,
    RedisConnectionError,
    RedisTimeoutError,
    aio_pika.exceptions.AMQPConnectionError,
    aio_pika.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelClosed,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    TimeoutError,
)


class Worker:
    """Consumes the task queue with manual acks and an explicit prefetch; drains on stop."""

    def __init__(
        self,
        *,
        connection: AbstractRobustConnection,
        topology: Topology,
        store: TaskStore,
        publisher: TaskPublisher,
        engine: Engine,
        prefetch: int,
        max_attempts: int,
        drain_seconds: float,
        redis_hop: Hop | None = None,
        lease_seconds: float = 30.0,
        wake_interval_s: float = 1.0,
        governance: Governance | None = None,
    ) -> None:
        self._connection = connection
        self._topology = topology
        self._store = store
        self._publisher = publisher
        self._engine = engine
        self._governance = governance
        self._prefetch = prefetch
        self._max_attempts = max_attempts
        self._drain_seconds = drain_seconds
        self._redis = RedisCalls(store, redis_hop or Hop("executor.redis"))
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: ConsumerTag | None = None
        self._draining = False
        self._tasks: set[asyncio.Task[None]] = set()
        # This worker instance's leases, and the tasks it is running now.
        self._leases = Leases(self._redis, lease_seconds)
        self._running: set[tuple[str, str]] = set()
        self._outcomes = Outcomes(redis=self._redis, publisher=publisher, topology=topology)
        # Parked (waiting) tasks: every worker re-publishes those that are due.
        self._waits = WaitStore(store)
        self._waker = Waker(self._waits, self._redis, publisher, interval_s=wake_interval_s)
        # Clients submit the same workflows over and over: parse each exact text once. A Workflow is never
        # changed by a run (expressions resolve into copies), so runs can share it. Only texts up to
        # CACHED_WORKFLOW_CHARS are kept, which bounds the cache's memory whatever tenants submit.
        self._parse_json = functools.lru_cache(maxsize=256)(self._parse_uncached)

    @property
    def consuming(self) -> bool:
        """Whether the consumer is registered on an open channel."""
        return self._tag is not None and self._channel is not None and not self._channel.is_closed

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        """Declare the topology and start consuming."""
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self._prefetch)
        _, self._queue = await self._topology.declare(self._channel)
        self._tag = await self._queue.consume(self._on_message, no_ack=False)
        self._waker.start()
        log.info("consuming", extra={"queue": self._topology.task_queue, "prefetch": self._prefetch})

    async def stop(self) -> None:
        """Stop taking work, let in-flight tasks finish within the drain period, hand back the rest."""
        self._draining = True
        await self._waker.stop()
        if self._queue is not None and self._tag is not None and self._channel is not None:
            try:
                await self._queue.cancel(self._tag)
            except Exception:  # the channel may already be gone; RabbitMQ then redelivers anyway
                log.warning("could not cancel the consumer", exc_info=True)
        self._tag = None
        if self._tasks:
            log.info("draining", extra={"in_flight": len(self._tasks), "drain_seconds": self._drain_seconds})
            _, pending = await asyncio.wait(set(self._tasks), timeout=self._drain_seconds)
            if pending:
                log.warning("handing back unfinished tasks", extra={"count": len(pending)})
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
        self._channel = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._draining:
            await settle(message, await self._put_back(message, "the worker is stopping"))
            return
        task = asyncio.create_task(self._handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        metrics.IN_FLIGHT.inc()
        disposition = Disposition.REQUEUE
        try:
            try:
                disposition = await self._process(message)
            except asyncio.CancelledError:
                log.info("task handed back", extra={"message_id": message.message_id})
                disposition = await self._put_back(message, "the worker is stopping")
            except _INFRA_ERRORS as exc:
                # Not the task's fault: try again later without spending an attempt, and without a requeue
                # (each one counts toward the delivery limit, after which RabbitMQ drops the message).
                log.warning(
                    "infrastructure unavailable; putting the delivery back",
                    extra={"message_id": message.message_id, "error": f"{type(exc).__name__}: {exc}"},
                )
                disposition = await self._put_back(message, f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                log.exception("unexpected error; dead-lettering", extra={"message_id": message.message_id})
                disposition = await self._outcomes.unexpected(message, exc)
        except asyncio.CancelledError:
            log.info("task handed back", extra={"message_id": message.message_id})
        finally:
            metrics.IN_FLIGHT.dec()
        if disposition is Disposition.REQUEUE:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(1.0)  # a pause, or a delivery that cannot be handled spins
        await settle(message, disposition)

    async def _put_back(self, message: AbstractIncomingMessage, reason: str) -> Disposition:
        """Copy the delivery to the shortest delay queue and ack it, so it comes back later without counting
        toward the delivery limit; requeue it if the copy cannot be published or acked."""
        if self._channel is None or self._channel.is_closed:
            return Disposition.REQUEUE
        headers = {k: v for k, v in (message.headers or {}).items() if k not in BROKER_HEADERS}
        queue = self._topology.retry_queue(min(self._topology.retry_delays_ms))
        try:
            await self._publisher.publish_to_queue(queue, copy_delivery(message, headers))
        except Exception:
            log.warning("could not put the delivery back; requeueing", exc_info=True)
            return Disposition.REQUEUE
        metrics.TASKS.labels("deferred").inc()
        log.info("delivery put back", extra={"message_id": message.message_id, "reason": reason})
        return Disposition.ACK

    async def _process(self, message: AbstractIncomingMessage) -> Disposition:
        headers = dict(message.headers or {})
        attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": self._topology.task_queue,
            "messaging.rabbitmq.destination.routing_key": message.routing_key or TASK_ROUTING_KEY,
            "messaging.message.body.size": len(message.body),
        }
        if message.message_id:
            attributes["messaging.message.id"] = message.message_id
        with telemetry.span(
            _tracer,
            f"process {self._topology.task_queue}",
            parent=telemetry.extract(headers),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            try:
                env = envelope.from_message(message)
                if env.type != TASK_TYPE:
                    raise InvalidInputError(f"unknown message type {env.type!r}; expected {TASK_TYPE!r}")
                check_tenant(env.tenant)
                check_task_id(env.task_id)
            except InvalidInputError as exc:
                span.set_status(Status(StatusCode.ERROR, exc.message))
                await self._outcomes.poison(
                    message, {"code": "poison_message", "message": exc.message, "retryable": False}
                )
                return Disposition.ACK
            span.set_attributes(
                {
                    "openclaw.task.id": env.task_id,
                    "openclaw.tenant": env.tenant,
                    "openclaw.task.attempt": env.attempt,
                    "openclaw.message.redelivered": bool(message.redelivered),
                }
            )
            deliveries = delivery_count(headers)
            if deliveries and deliveries >= self._topology.delivery_limit - 1:
                # RabbitMQ would drop the next redelivery without a word: end the crash loop here, visibly.
                span.set_status(Status(StatusCode.ERROR, "delivery limit reached"))
                await self._outcomes.abandoned(env, deliveries)
                return Disposition.ACK
            return await self._run(env, span)

    async def _run(self, env: tasks_pb2.TaskEnvelope, span: trace.Span) -> Disposition:
        tenant, task_id = env.tenant, env.task_id
        attempt = max(env.attempt, 1)
        max_attempts = env.max_attempts if env.max_attempts > 0 else self._max_attempts
        # What would end the task without running it is found before the claim (no I/O), and the claim
        # decides: a missing, ended or cancelled task is dealt with first, as it always was.
        refusal: dict[str, Any] | None = None
        denied: PermissionDeniedError | None = None
        workflow: Workflow | None = None
        inputs: dict[str, Any] = {}
        if env.deadline_unix_ms and now_ms() > env.deadline_unix_ms:
            late = now_ms() - env.deadline_unix_ms
            refusal = {
                "code": "deadline_exceeded",
                "message": f"the task's deadline passed {late} ms before it could start",
                "retryable": False,
            }
        else:
            try:
                # Sealed at rest in RabbitMQ when master keys are configured; env itself stays sealed, so
                # every copy this worker publishes (retry, put back, dead letter, parked) stays sealed too.
                workflow_json, inputs_json = await envelope.opened(env, self._store.sealer)
                workflow = self._workflow(env, workflow_json)
                inputs = workflow.bind_inputs(_inputs(inputs_json))
                if self._governance is not None:  # the policy may have changed since the gateway checked
                    self._governance.check_workflow(tenant, workflow)
            except PermissionDeniedError as exc:
                refusal, denied = exc.to_dict(), exc
            except (InvalidInputError, NotFoundError, DecryptionError) as exc:
                refusal = exc.to_dict()

        if (tenant, task_id) in self._running:  # a redelivery while this worker still runs the task
            await self._outcomes.later(env)
            return Disposition.ACK
        claim = await self._redis(
            self._store.claim,
            tenant,
            task_id,
            attempt=attempt,
            data={"attempt": attempt, "max_attempts": max_attempts},
            refuse=refusal is not None,
            first_step=None if workflow is None else _first_step(workflow, attempt),
            owner=self._leases.owner,
            lease_ms=self._leases.lease_ms,
        )
        if claim.outcome == "leased":  # another worker runs it: look again once that run may have ended
            await self._outcomes.later(env)
            return Disposition.ACK
        if claim.outcome == "missing":
            await self._outcomes.dead_letter(
                env, {"code": "not_found", "message": "no task record for this envelope"}
            )
            return Disposition.ACK
        if claim.outcome == "ended":
            log.info("skipping ended task", extra={"task_id": task_id, "status": claim.status})
            if claim.status == "cancelled":
                metrics.TASKS.labels("cancelled").inc()
            return Disposition.ACK
        if claim.outcome == "cancel_requested":
            await self._outcomes.end(
                env, "cancelled", "task.cancelled", error=cancelled("cancelled before it started")
            )
            return Disposition.ACK
        if refusal is not None or workflow is None:
            if denied is not None and self._governance is not None:
                await self._governance.refused(tenant, task_id, env.submitted_by, denied)
            await self._outcomes.end(env, "failed", "task.failed", error=refusal)
            return Disposition.ACK

        self._running.add((tenant, task_id))
        lease = asyncio.create_task(self._leases.keep(tenant, task_id))
        try:
            await self._execute(env, span, workflow, inputs, claim.steps, claim.step_started, max_attempts)
        except BaseException:
            # Handed back or failed unfinished: let the next delivery be claimed at once, not after the lease.
            lease.cancel()
            await self._leases.release(tenant, task_id)
            raise
        finally:
            lease.cancel()
            self._running.discard((tenant, task_id))
        return Disposition.ACK

    async def _execute(
        self,
        env: tasks_pb2.TaskEnvelope,
        span: trace.Span,
        workflow: Workflow,
        inputs: dict[str, Any],
        claimed_steps: dict[str, dict[str, Any]],
        announced_step_id: str,
        max_attempts: int,
    ) -> None:
        """Run a claimed task and store its outcome."""
        tenant, task_id = env.tenant, env.task_id
        attempt = max(env.attempt, 1)
        started = time.perf_counter()
        state = RunState(workflow=workflow, task_id=task_id, tenant=tenant, attempt=attempt, inputs=inputs)
        journal = TaskJournal(
            self._redis,
            tenant,
            task_id,
            attempt,
            claimed_steps=claimed_steps,
            announced_step_id=announced_step_id,
            last_step_id=workflow.steps[-1].id,
            waits=self._waits,
        )
        try:
            result = await self._engine.run(workflow, state, journal, actor=env.submitted_by)
        except WorkflowParked as exc:
            await self._park(env, exc)
        except WorkflowCancelled as exc:
            step = exc.next_step
            error = cancelled(f"cancelled by request before step {step.id!r}") | {"step_id": step.id}
            await self._outcomes.end(
                env, "cancelled", "task.cancelled", error=error, checkpoint=journal.take_final_checkpoint()
            )
        except StepFailed as exc:
            span.set_status(Status(StatusCode.ERROR, exc.error.message))
            await self._outcomes.failed(
                env, exc.record(), exc.retryable, attempt, max_attempts, journal.take_final_checkpoint()
            )
        except UnavailableError:
            raise  # Redis out of reach for the journal: not the task's fault, the delivery is put back
        except OpenClawError as exc:  # an operation's output that cannot be stored, for instance
            span.set_status(Status(StatusCode.ERROR, exc.message))
            await self._outcomes.failed(
                env, exc.to_dict(), exc.retryable, attempt, max_attempts, journal.take_final_checkpoint()
            )
        else:
            await self._outcomes.end(
                env, "succeeded", "task.succeeded", result=result, checkpoint=journal.take_final_checkpoint()
            )
        finally:
            metrics.TASK_DURATION.observe(time.perf_counter() - started)

    async def _park(self, env: tasks_pb2.TaskEnvelope, parked: WorkflowParked) -> None:
        """Keep a waiting task in Redis (status waiting) and let its delivery go: the waker re-publishes it
        when its time comes or a signal arrives, so no delivery stays unacknowledged while it waits."""
        data = {"step_id": parked.step.id, "wake_at_ms": parked.wake_at_ms, "signals": list(parked.signals)}
        await self._redis(
            self._waits.park,
            env.tenant,
            env.task_id,
            env.SerializeToString(),
            wake_at_ms=parked.wake_at_ms,
            signals=parked.signals,
            data=data,
        )
        log.info("task waiting", extra={"task_id": env.task_id, "tenant": env.tenant, **data})

    def _workflow(self, env: tasks_pb2.TaskEnvelope, workflow_json: str) -> Workflow:
        if workflow_json:
            if len(workflow_json) <= CACHED_WORKFLOW_CHARS:
                return self._parse_json(workflow_json)
            return self._parse_uncached(workflow_json)
        if env.template:
            return parse_workflow(load_template(env.template), known_ops=self._engine.catalogue)
        raise InvalidInputError("the envelope has neither a workflow nor a template")

    def _parse_uncached(self, workflow_json: str) -> Workflow:
        return parse_workflow(workflow_json, known_ops=self._engine.catalogue)


def _first_step(workflow: Workflow, attempt: int) -> tuple[str, Any] | None:
    """The step a fresh run starts with, and its step.started data, for the claim to announce (not one
    whose ``when`` may skip it)."""
    first = workflow.steps[0]
    return None if first.when is not None else (first.id, step_started_data(first, attempt))


def _inputs(inputs_json: str) -> dict[str, Any]:
    if not inputs_json:
        return {}
    try:
        value = json.loads(inputs_json)
    except ValueError as exc:
        raise InvalidInputError(f"inputs: not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidInputError("inputs: must be a JSON object")
    return value
