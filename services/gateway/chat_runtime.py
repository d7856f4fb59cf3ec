"""The gateway's chat side, assembled: channel webhooks, the conversations behind them, and schedules.

Built from the channels file (``OPENCLAW_GATEWAY_CHANNELS_FILE``, see channels_config.py); nothing runs when it is
not set. A channel serves only if its tenant's policy allows the channel; schedules submit through the same task
service as every protocol, with an idempotency key per slot and the tenant's policy applied.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from redis.asyncio import Redis
from starlette.routing import Route

from openclaw.v1 import chat_pb2
from services.common.encryption import Sealer
from services.common.errors import OpenClawError
from services.common.taskstore import TERMINAL, TaskRecord
from services.common.tenants import TenantDirectory
from services.gateway.channels_api import ChannelRoutes
from services.gateway.channels_config import ChatSetup
from services.gateway.conversations import AgentConfig, ChatModel, ConversationService
from services.gateway.schedules import Schedule, ScheduleRunner
from services.gateway.tasks import SubmitRequest, TaskService

log = logging.getLogger(__name__)


class ChatRuntime:
    """Owns the conversation service, the webhook routes and the schedule runner; started and stopped as one."""

    def __init__(
        self,
        setup: ChatSetup,
        *,
        redis: Redis,
        namespace: str,
        model: ChatModel,
        tasks: TaskService,
        tenants: TenantDirectory | None,
        sealer: Sealer | None = None,
    ) -> None:
        self._tasks = tasks
        self._tenants = tenants
        self.conversations = ConversationService(
            redis, namespace, model, setup.agents, run_agent=self._run_agent, sealer=sealer
        )
        self.webhooks = ChannelRoutes(setup.channels, self.conversations, allowed=self._channel_allowed)
        owner = f"gateway-{uuid.uuid4().hex[:8]}"
        self._deliveries: set[asyncio.Future[None]] = set()
        self.schedules = (
            ScheduleRunner(redis, namespace, setup.schedules, self._submit, owner=owner)
            if setup.schedules
            else None
        )

    def routes(self) -> list[Route]:
        return self.webhooks.routes()

    async def start(self) -> None:
        if self.schedules is not None:
            await self.schedules.start()

    async def stop(self) -> None:
        if self.schedules is not None:
            await self.schedules.stop()
        for delivery in list(self._deliveries):
            delivery.cancel()
        await self.conversations.idle()
        await self.webhooks.close()

    def _channel_allowed(self, tenant: str, channel: str) -> bool:
        if self._tenants is None:
            return True
        try:
            return self._tenants.policy(tenant).allows_channel(channel)
        except OpenClawError:
            return False  # disabled or unknown tenant

    async def _run_agent(self, agent: AgentConfig, tenant: str, instructions: str, conversation: str) -> str:
        """A tool-using turn: an agent step on the executor (tools run there, in the tenant's confinement)."""
        workflow = {
            "name": f"chat-{agent.name}",
            # Text from chat users travels as inputs, never inside the workflow, so it is data, not expressions.
            "inputs": {"instructions": {"required": True}, "conversation": {"required": True}},
            "steps": [
                {
                    "id": "turn",
                    "type": "agent",
                    "agent": {
                        "model": agent.model,
                        "instructions": "${{ inputs.instructions }}",
                        "input": "${{ inputs.conversation }}",
                        "tools": list(agent.tools),
                        "max_turns": agent.max_turns,
                        "timeout": agent.turn_timeout_s,
                        "on_budget": "answer",
                    },
                }
            ],
        }
        request = SubmitRequest(
            workflow=workflow, inputs={"instructions": instructions, "conversation": conversation}
        )
        policy = self._tenants.policy(tenant) if self._tenants is not None else None
        submitted = await self._tasks.submit(
            tenant, request, policy=policy, submitted_by=f"agent:{agent.name}"
        )
        record = await self._ended(tenant, submitted.task.id, agent.turn_timeout_s + 10)
        if record.status != "succeeded":
            reason = (
                (record.error or {}).get("message", record.status)
                if isinstance(record.error, dict)
                else record.status
            )
            raise RuntimeError(f"agent turn {submitted.task.id} ended {record.status}: {reason}")
        result = record.result
        output = result.get("content", "") if isinstance(result, dict) else str(result or "")
        return str(output)

    async def _ended(self, tenant: str, task_id: str, max_wait_s: float) -> TaskRecord:
        """The task once it has ended, or as it is after ``max_wait_s`` (each long-poll is bounded)."""
        deadline = time.monotonic() + max_wait_s
        record = await self._tasks.get(tenant, task_id, wait_s=30)
        while record.status not in TERMINAL and time.monotonic() < deadline:
            record = await self._tasks.get(tenant, task_id, wait_s=30)
        return record

    async def _submit(self, schedule: Schedule, slot: float, idempotency_key: str) -> str:
        request = SubmitRequest(
            workflow=schedule.workflow,
            template=schedule.template or "",
            inputs=dict(schedule.inputs),
            idempotency_key=idempotency_key,
        )
        policy = self._tenants.policy(schedule.tenant) if self._tenants is not None else None
        submitted = await self._tasks.submit(
            schedule.tenant, request, policy=policy, submitted_by=f"schedule:{schedule.id}"
        )
        if schedule.deliver_to is not None:
            # Delivered by the replica that fired the slot; if it stops first, the result stays readable by id.
            self._deliveries.add(task := asyncio.ensure_future(self._deliver(schedule, submitted.task.id)))
            task.add_done_callback(self._deliveries.discard)
        return submitted.task.id

    async def _deliver(self, schedule: Schedule, task_id: str, max_wait_s: float = 3600.0) -> None:
        """Post a scheduled task's outcome to its channel once the task has ended."""
        assert schedule.deliver_to is not None
        try:
            record = await self._ended(schedule.tenant, task_id, max_wait_s)
            result = record.result
            if isinstance(result, dict) and isinstance(result.get("content"), str):
                text = result["content"]
            elif record.status == "succeeded":
                text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)[:3500]
            else:
                text = f"schedule {schedule.id}: task {task_id} {record.status}"
            channel = self.webhooks.channels[schedule.deliver_to["channel"]]
            await channel.send(
                chat_pb2.ChannelReply(
                    channel=channel.config.name,
                    account=channel.config.account,
                    conversation=schedule.deliver_to["conversation"],
                    text=text,
                    context={"schedule": schedule.id, "task_id": task_id},
                )
            )
        except Exception:
            log.exception("schedule delivery failed", extra={"schedule": schedule.id, "task_id": task_id})
