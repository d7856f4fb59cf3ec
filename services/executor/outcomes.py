"""Where a task's run ends up: its outcome stored, a retry or dead-letter copy published, or put back."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from openclaw.v1 import tasks_pb2
from services.common import envelope
from services.common.envelope import ERROR_HEADER, TENANT_HEADER
from services.common.errors import InvalidInputError
from services.common.identifiers import check_task_id, check_tenant
from services.common.publisher import TaskPublisher
from services.common.topology import Topology
from services.executor import metrics
from services.executor.delivery import Disposition, copy_delivery
from services.executor.journal import RedisCalls

log = logging.getLogger(__name__)
_OUTCOMES = {outcome: metrics.TASKS.labels(outcome) for outcome in metrics.OUTCOMES}


class Outcomes:
    """Stores how a task ended and publishes what follows from it, for the worker."""

    def __init__(self, *, redis: RedisCalls, publisher: TaskPublisher, topology: Topology) -> None:
        self._redis = redis
        self._store = redis.store
        self._publisher = publisher
        self._topology = topology

    async def end(
        self,
        env: tasks_pb2.TaskEnvelope,
        status: str,
        event: str,
        *,
        result: Any = None,
        error: dict[str, Any] | None = None,
        checkpoint: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        """Store the task's final status with its event (and the last step's checkpoint, if held back)."""
        fields: dict[str, str] = {}
        if result is not None or status == "succeeded":
            fields["result"] = json.dumps(result, ensure_ascii=False)
        if status == "succeeded":
            fields["error"] = ""  # an earlier attempt's error is not this outcome's
        if error is not None:
            fields["error"] = json.dumps(error, ensure_ascii=False)
        await self._redis(
            self._store.transition,
            env.tenant,
            env.task_id,
            status,
            event,
            fields=fields,
            data=result,
            error=error,
            checkpoint=checkpoint,
        )
        _OUTCOMES[status].inc()
        # Success is the hot path: no log line per task there (the metric and the trace tell it).
        log.log(
            logging.DEBUG if status == "succeeded" else logging.INFO,
            "task %s",
            status,
            extra={"task_id": env.task_id, "tenant": env.tenant, "attempt": env.attempt},
        )

    async def failed(
        self,
        env: tasks_pb2.TaskEnvelope,
        error: dict[str, Any],
        retryable: bool,
        attempt: int,
        max_attempts: int,
        checkpoint: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        """A failed run: retry it after a delay while attempts remain, else fail the task (dead-lettered if it
        could have been retried)."""
        if retryable and attempt < max_attempts:
            delay = self._topology.retry_delay_ms(attempt)
            # Status first, then the retry message: if the publish fails the delivery is requeued and this
            # attempt simply runs again, while a status written after the publish could overwrite "running".
            await self._redis(
                self._store.transition,
                env.tenant,
                env.task_id,
                "retrying",
                "task.retrying",
                fields={"error": json.dumps(error, ensure_ascii=False)},
                data={"attempt": attempt, "next_attempt": attempt + 1, "delay_ms": delay},
                error=error,
                checkpoint=checkpoint,
            )
            retry = tasks_pb2.TaskEnvelope()
            retry.CopyFrom(env)
            retry.attempt = attempt + 1
            retry.max_attempts = max_attempts
            await self._publisher.publish_to_queue(
                self._topology.retry_queue(delay), envelope.to_message(retry)
            )
            metrics.TASKS.labels("retried").inc()
            log.info("task retrying", extra={"task_id": env.task_id, "attempt": attempt, "delay_ms": delay})
            return
        if not retryable:
            await self.end(env, "failed", "task.failed", error=error, checkpoint=checkpoint)
            return
        error = {
            **error,
            "attempts": attempt,
            "message": f"gave up after {attempt} attempts: {error.get('message')}",
        }
        # The dead-letter copy first: if storing the status then fails, the redelivery runs again and
        # dead-letters a duplicate, which is better than a failed task with no copy to replay.
        await self.dead_letter(env, error)
        await self._redis(
            self._store.transition,
            env.tenant,
            env.task_id,
            "failed",
            "task.failed",
            fields={"error": json.dumps(error, ensure_ascii=False)},
            error=error,
            checkpoint=checkpoint,
        )

    async def abandoned(self, env: tasks_pb2.TaskEnvelope, deliveries: int) -> None:
        """Fail a task whose delivery kept being lost by workers, and dead-letter it with that reason."""
        record = await self._redis(self._store.get, env.tenant, env.task_id)
        if record is not None and record.status in ("succeeded", "failed", "cancelled"):
            log.info("skipping ended task", extra={"task_id": env.task_id, "status": record.status})
            return
        error = {
            "code": "abandoned",
            "message": f"crashed or was abandoned by workers {deliveries} times",
            "retryable": False,
            "deliveries": deliveries,
        }
        await self.dead_letter(env, error)
        if record is not None:
            await self.end(env, "failed", "task.failed", error=error)

    async def dead_letter(self, env: tasks_pb2.TaskEnvelope, error: dict[str, Any]) -> None:
        """Publish the envelope to the dead queue with the error in its headers."""
        headers = {ERROR_HEADER: json.dumps(error, ensure_ascii=False)}
        await self._publisher.publish_to_queue(self._topology.dead_queue, envelope.to_message(env, headers))
        metrics.TASKS.labels("dead_lettered").inc()
        log.warning("task dead-lettered", extra={"task_id": env.task_id, "error": error.get("message")})

    async def poison(self, message: AbstractIncomingMessage, error: dict[str, Any]) -> None:
        """Copy a delivery that no retry can help to the dead queue with the reason; fail its task if it
        names one."""
        headers: dict[str, Any] = dict(message.headers or {})
        headers[ERROR_HEADER] = json.dumps(error, ensure_ascii=False)
        await self._publisher.publish_to_queue(self._topology.dead_queue, copy_delivery(message, headers))
        metrics.TASKS.labels("dead_lettered").inc()
        log.warning(
            "poison message dead-lettered",
            extra={"message_id": message.message_id, "reason": error["message"]},
        )
        tenant: Any = headers.get(TENANT_HEADER)
        task_id = message.message_id
        with contextlib.suppress(Exception):  # the body names the task better than headers, if it decodes
            env = envelope.from_message(message)
            tenant, task_id = env.tenant, env.task_id
        if isinstance(tenant, bytes):
            tenant = tenant.decode("utf-8", "replace")
        if isinstance(tenant, str) and task_id:
            try:
                check_tenant(tenant)
                check_task_id(task_id)
            except InvalidInputError:
                return
            await self._redis(
                self._store.transition,
                tenant,
                task_id,
                "failed",
                "task.failed",
                fields={"error": json.dumps(error, ensure_ascii=False)},
                error=error,
            )

    async def unexpected(self, message: AbstractIncomingMessage, exc: Exception) -> Disposition:
        """A bug or a malformed delivery: no retry can help. Dead-letter it and fail its task with the reason."""
        error = {
            "code": "internal",
            "message": f"unexpected {type(exc).__name__} while handling the task: {exc}"[:1000],
            "retryable": False,
        }
        try:
            await self.poison(message, error)
        except Exception:
            log.exception("could not dead-letter the delivery; requeueing")
            return Disposition.REQUEUE
        return Disposition.ACK

    async def later(self, env: tasks_pb2.TaskEnvelope) -> None:
        """Put the envelope, unchanged, on the shortest delay queue (the task runs elsewhere for now)."""
        queue = self._topology.retry_queue(min(self._topology.retry_delays_ms))
        await self._publisher.publish_to_queue(queue, envelope.to_message(env))
        metrics.TASKS.labels("deferred").inc()
        log.info(
            "task runs elsewhere; delivery put back", extra={"task_id": env.task_id, "tenant": env.tenant}
        )


def cancelled(message: str) -> dict[str, Any]:
    return {"code": "cancelled", "message": message, "retryable": False}
