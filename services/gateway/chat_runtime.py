"""The gateway's chat side, assembled: channel webhooks, the conversations behind them, and schedules.

Built from the channels file (``OPENCLAW_GATEWAY_CHANNELS_FILE``, see channels_config.py); nothing runs when it is
not set. A channel serves only if its tenant's policy allows the channel; schedules submit through the same task
service as every protocol, with an idempotency key per slot and the tenant's policy applied.
"""

from __future__ import annotations

import logging
import time
import uuid

from redis.asyncio import Redis
from starlette.routing import Route

from services.common.errors import OpenClawError
from services.common.taskstore import TERMINAL
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
    ) -> None:
        self._tasks = tasks
        self._tenants = tenants
        self.conversations = ConversationService(
            redis, namespace, model, setup.agents, run_agent=self._run_agent
        )
        self.webhooks = ChannelRoutes(setup.channels, self.conversations, allowed=self._channel_allowed)
        owner = f"gateway-{uuid.uuid4().hex[:8]}"
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
        deadline = time.monotonic() + agent.turn_timeout_s + 10
        record = await self._tasks.get(tenant, submitted.task.id, wait_s=30)
        while record.status not in TERMINAL and time.monotonic() < deadline:
            record = await self._tasks.get(tenant, submitted.task.id, wait_s=30)  # each wait is bounded
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
        return submitted.task.id
