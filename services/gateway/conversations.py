"""Conversations on chat channels: dedupe across replicas, one message at a time per conversation, sessions in Redis.

A verified, normalized inbound message goes through:

1. dedupe: the platform's message id is claimed in Redis (``SET NX``), so when a platform retries a webhook or
   two gateway replicas receive it, exactly one processes it;
2. access: the sender must be allowed on the channel (or paired); in groups the bot answers only when mentioned,
   unless the channel says otherwise;
3. ordering: messages of one conversation are appended to its inbox; whichever replica holds the conversation's
   lease drains the inbox in order, one turn at a time, while other conversations run in parallel. A message that
   arrives while a turn is running waits (``queue``) or is folded with the other waiting ones into the next turn
   (``merge``);
4. the turn: the agent's system prompt, the session's summary and recent history, and the message go to the model
   through the router; the reply goes back through the channel's adapter and both are appended to the history;
   long histories are compacted into a summary that keeps the facts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from google.protobuf import json_format
from redis.asyncio import Redis

from openclaw.v1 import chat_pb2, router_pb2
from services.common.encryption import TEXT_PREFIX, Sealer
from services.common.errors import InvalidInputError
from services.gateway.channels import Channel

log = logging.getLogger(__name__)

# Take a conversation's lease if free or already ours: KEYS[1] lease; ARGV owner, ms. 1 when held by us.
_LEASE = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# Release the lease only if the inbox is empty, atomically, so a message appended meanwhile is never stranded.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 1 end
if redis.call('LLEN', KEYS[2]) > 0 then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


RunAgent = Callable[["AgentConfig", str, str, str], Awaitable[str]]
"""run_agent(agent, tenant, instructions, conversation) -> the answer (a tool-using turn, run as a task)."""


class ChatModel(Protocol):
    """The router as conversations use it."""

    async def chat(self, request: router_pb2.ChatRequest) -> router_pb2.ChatResponse: ...


@dataclass(frozen=True)
class AgentConfig:
    """An agent answering on channels: its model, system prompt and the channels it is bound to."""

    name: str
    model: str
    system_prompt: str = ""
    channels: tuple[str, ...] = ()
    policy: Literal["queue", "merge"] = "queue"
    # Operations the agent may call as tools; with any, a turn runs as an agent step on the executor.
    tools: tuple[str, ...] = ()
    max_turns: int = 8
    turn_timeout_s: float = 120.0
    history_messages: int = 20
    compact_after: int = 40
    max_reply_chars: int = 4000


@dataclass
class TurnResult:
    conversation: str
    replied: str
    merged: int = 1


@dataclass
class Outcome:
    """What happened to one inbound message (for the webhook's logs and the tests)."""

    status: Literal["queued", "duplicate", "ignored", "refused", "pairing"]
    reason: str = ""
    pairing_code: str = ""


@dataclass
class ConversationService:
    """Runs the pipeline for every channel of the gateway."""

    redis: Redis
    namespace: str
    model: ChatModel
    agents: Mapping[str, AgentConfig]
    owner: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    lease_ms: int = 60_000
    dedupe_ttl_s: int = 24 * 3600
    on_turn: Callable[[TurnResult], Awaitable[None]] | None = None
    run_agent: RunAgent | None = None
    # With master keys configured: history, summaries and queued messages are sealed with the tenant's data key.
    sealer: Sealer | None = None

    def __post_init__(self) -> None:
        self._lease = self.redis.register_script(_LEASE)
        self._release = self.redis.register_script(_RELEASE)
        self._tasks: set[asyncio.Task[None]] = set()

    def _key(self, msg: chat_pb2.ChannelMessage | chat_pb2.ChannelReply, part: str) -> str:
        return f"{self.namespace}:conv:{msg.channel}:{msg.conversation}:{part}"

    async def _seal(self, tenant: str, where: str, text: str) -> str:
        return await self.sealer.seal_text(tenant, text, where) if self.sealer is not None else text

    async def _open(self, tenant: str, where: str, value: str) -> str:
        if value.startswith(TEXT_PREFIX):  # sealed (older plaintext values still read as they are)
            if self.sealer is None:
                raise InvalidInputError(f"{where}: sealed, but no master key is configured")
            return await self.sealer.open_text(tenant, value, where)
        return value

    def agent_for(self, channel: str) -> AgentConfig | None:
        return next((a for a in self.agents.values() if channel in a.channels), None)

    async def receive(self, channel: Channel, msg: chat_pb2.ChannelMessage) -> Outcome:
        """Admit one verified message; the turn runs in the background (webhooks must answer within seconds)."""
        dedupe = f"{self.namespace}:chatseen:{msg.channel}:{msg.message_id}"
        if not await self.redis.set(dedupe, self.owner, nx=True, ex=self.dedupe_ttl_s):
            return Outcome("duplicate")
        agent = self.agent_for(msg.channel)
        if agent is None:
            return Outcome("ignored", "no agent answers on this channel")
        config = channel.config
        if msg.is_group and config.groups_require_mention and not any(m.is_bot for m in msg.mentions):
            return Outcome("ignored", "a group message that does not mention the bot")
        if not await self._allowed(config.allow_senders, msg):
            code = await self._pairing_code(msg)
            await channel.send(
                chat_pb2.ChannelReply(
                    channel=msg.channel,
                    account=msg.account,
                    conversation=msg.conversation,
                    reply_to=msg.message_id,
                    text=f"I don't know you yet. Ask an admin to approve pairing code {code}.",
                    context=dict(msg.context),
                )
            )
            return Outcome("pairing", "sender not allowed on this channel", code)
        inbox = self._key(msg, "inbox")
        item = await self._seal(msg.tenant, inbox, json_format.MessageToJson(msg))
        await self.redis.rpush(inbox, item)  # type: ignore[misc]
        self._spawn(self._drain(channel, agent, msg))
        return Outcome("queued")

    async def approve(self, channel: str, code: str) -> str:
        """Approve a pairing code (an admin action): its sender may talk on the channel from now on."""
        sender = await self.redis.getdel(f"{self.namespace}:pairing:{channel}:{code}")
        if sender is None:
            raise LookupError(f"no pending pairing code {code!r} on channel {channel!r}")
        await self.redis.sadd(f"{self.namespace}:paired:{channel}", sender)  # type: ignore[misc]
        return str(sender)

    async def history(self, channel: str, conversation: str, tenant: str = "") -> list[dict[str, str]]:
        key = f"{self.namespace}:conv:{channel}:{conversation}:history"
        raw = await self.redis.lrange(key, 0, -1)  # type: ignore[misc]
        return [json.loads(await self._open(tenant, key, item)) for item in raw]

    async def idle(self) -> None:
        """Wait until every turn started so far has finished (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _allowed(self, allow: tuple[str, ...], msg: chat_pb2.ChannelMessage) -> bool:
        if not allow or "*" in allow or msg.sender_id in allow:
            return True
        return bool(await self.redis.sismember(f"{self.namespace}:paired:{msg.channel}", msg.sender_id))  # type: ignore[misc]

    async def _pairing_code(self, msg: chat_pb2.ChannelMessage) -> str:
        code = f"{secrets.randbelow(10**6):06d}"
        await self.redis.set(f"{self.namespace}:pairing:{msg.channel}:{code}", msg.sender_id, ex=3600)
        return code

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, channel: Channel, agent: AgentConfig, msg: chat_pb2.ChannelMessage) -> None:
        """Hold the conversation's lease and answer its inbox in order; another replica's drain does the same."""
        lease, inbox = self._key(msg, "lease"), self._key(msg, "inbox")
        holder = f"{self.owner}:{uuid.uuid4().hex[:8]}"  # per drain: two drains in one process exclude each other too
        while True:
            if not await self._lease(keys=[lease], args=[holder, self.lease_ms]):
                return  # another replica (or turn) holds the conversation: it will see our message
            batch = await self._take(inbox, agent.policy, msg.tenant)
            if batch:
                try:
                    await self._turn(channel, agent, batch)
                except Exception:
                    log.exception("conversation turn failed", extra={"conversation": msg.conversation})
                continue
            if await self._release(keys=[lease, inbox], args=[holder]):
                return

    async def _take(self, inbox: str, policy: str, tenant: str) -> list[chat_pb2.ChannelMessage]:
        """The next message (``queue``), or every waiting message folded into one turn (``merge``)."""
        if policy == "merge":
            items = await self._pop_all(inbox)
        else:
            first = await self.redis.lpop(inbox)  # type: ignore[misc]
            items = [first] if first else []
        return [
            json_format.Parse(await self._open(tenant, inbox, item), chat_pb2.ChannelMessage())
            for item in items
        ]

    async def _pop_all(self, inbox: str) -> list[str]:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(inbox, 0, -1)
            pipe.delete(inbox)
            items, _ = await pipe.execute()
        return list(items)

    async def _turn(self, channel: Channel, agent: AgentConfig, batch: list[chat_pb2.ChannelMessage]) -> None:
        last = batch[-1]
        text = "\n".join(m.text for m in batch)
        history_key, summary_key = self._key(last, "history"), self._key(last, "summary")
        raw_summary = await self.redis.get(summary_key)
        summary = await self._open(last.tenant, summary_key, raw_summary) if raw_summary else ""
        past = [
            await self._open(last.tenant, history_key, item)
            for item in await self.redis.lrange(history_key, -agent.history_messages, -1)  # type: ignore[misc]
        ]
        messages = (
            [router_pb2.ChatMessage(role="system", content=agent.system_prompt)]
            if agent.system_prompt
            else []
        )
        if summary:
            messages.append(
                router_pb2.ChatMessage(
                    role="system", content=f"Summary of the conversation so far: {summary}"
                )
            )
        messages += [router_pb2.ChatMessage(**json.loads(item)) for item in past]
        messages.append(router_pb2.ChatMessage(role="user", content=text, name=last.sender_id[:64]))
        if agent.tools and self.run_agent is not None:
            instructions = "\n\n".join(m.content for m in messages if m.role == "system") or "Help the user."
            transcript = "\n".join(f"{m.role}: {m.content}" for m in messages[:-1] if m.role != "system")
            conversation = f"{transcript}\nuser: {text}" if transcript else text
            answer = await self.run_agent(agent, last.tenant, instructions, conversation)
        else:
            response = await self.model.chat(
                router_pb2.ChatRequest(
                    model=agent.model,
                    messages=messages,
                    tenant=last.tenant,
                    request_id=f"conv-{last.message_id}",
                    priority="interactive",
                )
            )
            answer = response.message.content
        answer = answer[: agent.max_reply_chars]
        await channel.send(
            chat_pb2.ChannelReply(
                channel=last.channel,
                account=last.account,
                conversation=last.conversation,
                thread=last.thread,
                reply_to=last.reply_to or last.message_id,
                text=answer,
                context=dict(last.context),
            )
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(
                history_key,
                await self._seal(last.tenant, history_key, json.dumps({"role": "user", "content": text})),
                await self._seal(
                    last.tenant, history_key, json.dumps({"role": "assistant", "content": answer})
                ),
            )
            pipe.llen(history_key)
            _, length = await pipe.execute()
        if length > agent.compact_after:
            await self._compact(agent, last, history_key, summary_key, str(summary or ""))
        if self.on_turn is not None:
            await self.on_turn(TurnResult(last.conversation, answer, len(batch)))

    async def _compact(
        self,
        agent: AgentConfig,
        last: chat_pb2.ChannelMessage,
        history_key: str,
        summary_key: str,
        summary: str,
    ) -> None:
        """Fold the older half of the history into the summary, keeping facts, names, numbers and decisions."""
        keep = agent.history_messages
        old = [
            await self._open(last.tenant, history_key, item)
            for item in await self.redis.lrange(history_key, 0, -keep - 1)  # type: ignore[misc]
        ]
        if not old:
            return
        transcript = "\n".join(f"{m['role']}: {m['content']}" for m in map(json.loads, old))
        response = await self.model.chat(
            router_pb2.ChatRequest(
                model=agent.model,
                tenant=last.tenant,
                request_id=f"compact-{last.message_id}",
                priority="batch",
                messages=[
                    router_pb2.ChatMessage(
                        role="system",
                        content="Summarise this conversation for your own memory. Keep every fact, name, number, "
                        "date, decision and open question; drop pleasantries. Reply with the summary only.",
                    ),
                    router_pb2.ChatMessage(
                        role="user", content=f"Earlier summary: {summary}\n\n{transcript}"
                    ),
                ],
            )
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(summary_key, await self._seal(last.tenant, summary_key, response.message.content))
            pipe.ltrim(history_key, -keep, -1)
            await pipe.execute()
