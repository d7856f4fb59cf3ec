"""Agent steps: a model is offered operations as tools, calls them, sees the results, and goes on until it
answers or a budget (turns, tokens, wall time) runs out.

Only the step's allow-listed operations are offered, and only they run: a call of any other name, arguments
that are not a JSON object or fail the operation's params model, and the operation's own errors all go back
to the model as the tool's result, so it can correct itself. Each tool runs with the step's tenant, like an
operation step. Every model turn and every tool call is checkpointed (``<step key>/turn<n>`` and
``<step key>/turn<n>/call<m>``) as it completes, so a redelivered task replays them and does not ask the model
or run a tool again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol, cast

from opentelemetry import trace
from pydantic import ValidationError

from openclaw.v1 import router_pb2
from services.common.errors import InvalidInputError, OpenClawError, ResourceExhaustedError
from services.executor.agent_spec import AgentSpec, tool_definitions, tool_name
from services.executor.context import OpContext, RunState
from services.executor.failures import WorkflowCancelled
from services.executor.model import Step
from services.executor.ops._llm_request import context_text
from services.executor.ops.base import Operation

if TYPE_CHECKING:
    from services.executor.engine import Run

MAX_CALLS_PER_TURN = 16
"""Tool calls run per model turn; further ones in the same turn are answered with an error, not run."""
ARGUMENTS_CHARS = 2048
"""A tool call's arguments longer than this (as JSON) are cut in the step's output (a file's content, say)."""

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("openclaw.executor")


class AgentJournal(Protocol):
    """A journal that keeps an agent step's turns and tool calls across deliveries."""

    async def agent_records(self, key: str) -> dict[str, dict[str, Any]]:
        """What the agent step under ``key`` recorded before, by record key."""
        ...

    async def agent_recorded(self, step: Step, record_key: str, kind: str, record: dict[str, Any]) -> None:
        """Record a model turn (``kind`` "turn") or a tool call ("tool_call") durably, with its event."""
        ...


class BudgetExhaustedError(ResourceExhaustedError):
    """An agent ran out of turns, tokens or time; a redelivery would replay into the same budget."""

    retryable = False


class _OutOfTime(Exception):
    """The step's wall-time budget ran out during a model or tool call."""


async def run_agent(
    run: Run, step: Step, keyed: Step, state: RunState, scope: dict[str, Any]
) -> dict[str, Any]:
    """Run an agent step; its output: the answer, turns, tool calls and usage."""
    return await _Agent(run, step, keyed, state, scope).run()


class _Agent:
    """One run of an agent step: its resolved spec, its tools by tool name, and what it has spent."""

    def __init__(self, run: Run, step: Step, keyed: Step, state: RunState, scope: dict[str, Any]) -> None:
        self.runner, self.keyed, self.state, self.scope = run, keyed, state, scope
        self.services = run.engine.services
        self.spec = self._spec(step)
        self.tools: dict[str, tuple[str, Operation[Any]]] = {}
        for name in self.spec.tools:
            op = run.engine.catalogue.get(name)
            if op is None:
                raise InvalidInputError(
                    f"{keyed.label()}: {keyed.path}.agent.tools: {name!r} is not an operation of this executor"
                )
            self.tools[tool_name(name)] = (name, op)
        journal = run.journal
        keeps = callable(getattr(journal, "agent_records", None))
        self.journal = cast(AgentJournal, journal) if keeps else None
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        self.calls: list[dict[str, Any]] = []

    def _spec(self, step: Step) -> AgentSpec:
        keyed = self.keyed
        raw = self.runner.resolve(keyed, step.agent or {}, self.scope, "agent")
        try:
            return AgentSpec.model_validate(raw)
        except ValidationError as exc:
            lines = [_problem(f"{keyed.path}.agent", e) for e in exc.errors()]
            raise InvalidInputError(f"{keyed.label()}: " + "; ".join(lines), errors=lines) from exc

    def _messages(self) -> list[dict[str, Any]]:
        """The conversation's start: the instructions, and the input as the user message."""
        spec = self.spec
        given = "input" in spec.model_fields_set
        context = spec.input if given else self.scope.get("prev", {}).get("output")
        if context is None:
            return [{"role": "user", "content": spec.instructions}]
        return [
            {"role": "system", "content": spec.instructions},
            {"role": "user", "content": context_text(context)},
        ]

    async def run(self) -> dict[str, Any]:
        spec, key = self.spec, self.keyed.id
        records = await self.journal.agent_records(key) if self.journal is not None else {}
        messages = self._messages()
        definitions = tool_definitions({name: op for name, op in self.tools.values()})
        deadline = time.monotonic() + spec.timeout
        last: dict[str, Any] | None = None
        turn = 0
        while True:
            turn += 1
            turn_key = f"{key}/turn{turn}"
            record = records.get(turn_key)
            if record is None:
                stop = self._exhausted(turn, deadline)
                if stop is not None:
                    return self._stopped(stop, last, turn - 1)
                # Between turns, like between steps: a long loop must not outlive a cancellation.
                if turn > 1 and await self.runner.journal.cancel_requested():
                    raise WorkflowCancelled(self.keyed)
                try:
                    record = await self._ask(messages, definitions, turn, deadline)
                except _OutOfTime:
                    return self._stopped("timeout", last, turn - 1)
                await self._record(turn_key, "turn", record)
            for name in self.usage:
                self.usage[name] += int(record.get("usage", {}).get(name, 0))
            last = record
            messages.append(_assistant(record))
            if not record["tool_calls"]:
                return self._output(record, "answer", turn)
            for index, call in enumerate(record["tool_calls"], 1):
                call_key = f"{turn_key}/call{index}"
                done = records.get(call_key)
                if done is None:
                    try:
                        done = await self._call(call, turn, index, deadline)
                    except _OutOfTime:
                        return self._stopped("timeout", last, turn)
                    await self._record(call_key, "tool_call", done)
                self.calls.append(done)
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": done["result"]})

    def _exhausted(self, turn: int, deadline: float) -> str | None:
        """Which budget forbids another model call, if one does."""
        if turn > self.spec.max_turns:
            return "max_turns"
        if self.usage["total_tokens"] >= self.spec.max_tokens:
            return "max_tokens"
        if time.monotonic() >= deadline:
            return "timeout"
        return None

    async def _ask(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], turn: int, deadline: float
    ) -> dict[str, Any]:
        """One model turn through the router, as a record: its text, tool calls, usage and timing."""
        spec, state = self.spec, self.state
        request = router_pb2.ChatRequest(
            model=spec.model,
            messages=[_pb_message(m) for m in messages],
            tenant=state.tenant,
            request_id=f"{state.task_id}:{self.keyed.id}/turn{turn}:{state.attempt}",
            priority="agent",
        )
        if spec.temperature is not None:
            request.temperature = spec.temperature
        if tools:
            request.extra.update({"tools": tools, "tool_choice": "auto"})
        router = self.services.require_router()
        # The router's own deadline comes a little after the budget's, so running out of time reads as such.
        remaining = deadline - time.monotonic() + 1.0
        start = time.perf_counter()
        try:
            async with asyncio.timeout_at(_loop_time(deadline)) as budget:
                response = await router.chat(
                    request, timeout_s=min(remaining, self.services.router_timeout_s)
                )
        except TimeoutError:
            if budget.expired():
                raise _OutOfTime from None
            raise
        message = response.message
        return {
            "turn": turn,
            "content": message.content,
            "tool_calls": [
                {"id": c.id or f"call_{turn}_{i}", "name": c.name, "arguments": c.arguments}
                for i, c in enumerate(message.tool_calls, 1)
            ],
            "finish_reason": response.finish_reason,
            "model": response.model,
            "usage": {
                "prompt_tokens": response.usage.prompt_tokens,
                "completion_tokens": response.usage.completion_tokens,
                "total_tokens": response.usage.total_tokens,
            },
            "duration_ms": round((time.perf_counter() - start) * 1000, 3),
        }

    async def _call(self, call: dict[str, Any], turn: int, index: int, deadline: float) -> dict[str, Any]:
        """Run one tool call the model asked for; failures become the result the model sees, never raise."""
        start = time.perf_counter()
        name, raw = call["name"], call["arguments"]
        entry = self.tools.get(name)
        record: dict[str, Any] = {
            "turn": turn,
            "id": call["id"],
            "tool": name,
            "name": entry[0] if entry is not None else None,
            "arguments": raw,
        }
        with _tracer.start_as_current_span(
            f"tool {name}", attributes={"openclaw.step.id": self.keyed.id, "openclaw.tool": name}
        ):
            try:
                output = await self._invoke(entry, name, raw, record, (turn, index), deadline)
            except OpenClawError as exc:
                record.update(ok=False, error={"code": exc.code, "message": exc.message})
                text = json.dumps({"error": record["error"]}, ensure_ascii=False)
            else:
                record["ok"] = True
                text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
        limit = self.spec.max_result_chars
        if len(text) > limit:
            text = text[:limit] + f"\n[... cut, {len(text) - limit} more characters]"
        record["result"] = text
        record["duration_ms"] = round((time.perf_counter() - start) * 1000, 3)
        return record

    async def _invoke(
        self,
        entry: tuple[str, Operation[Any]] | None,
        name: str,
        raw: str,
        record: dict[str, Any],
        where: tuple[int, int],
        deadline: float,
    ) -> Any:
        """The operation's output for one call, as JSON; OpenClawError for anything the model should hear."""
        turn, index = where
        if entry is None:
            offered = ", ".join(sorted(self.tools)) or "none"
            raise InvalidInputError(f"tool {name!r} is not available; the tools offered are: {offered}")
        if index > MAX_CALLS_PER_TURN:
            raise InvalidInputError(f"not run: at most {MAX_CALLS_PER_TURN} tool calls are run per turn")
        op_name, op = entry
        try:
            arguments = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise InvalidInputError(f"arguments: not valid JSON ({exc})") from None
        if not isinstance(arguments, dict):
            raise InvalidInputError("arguments: must be a JSON object")
        record["arguments"] = arguments
        ctx = OpContext(
            tenant=self.state.tenant,
            task_id=self.state.task_id,
            step_id=f"{self.keyed.id}/turn{turn}/call{index}",
            services=self.services,
            attempt=self.state.attempt,
            workflow_name=self.state.workflow.name,
        )

        async def invoke() -> Any:
            try:
                params = op.params.model_validate(arguments)
            except ValidationError as exc:
                raise InvalidInputError("; ".join(_problem("arguments", e) for e in exc.errors())) from None
            return await op.run(params, ctx)

        governance = self.runner.engine.governance
        try:
            async with asyncio.timeout_at(_loop_time(deadline)) as budget:
                if governance is None:
                    output = await invoke()
                else:  # the tenant's policy applies to tools as to steps: refused, network-confined, audited
                    output = await governance.run_op(
                        op_name,
                        invoke,
                        tenant=ctx.tenant,
                        task_id=ctx.task_id,
                        step_id=ctx.step_id,
                        attempt=ctx.attempt,
                        actor=self.runner.actor,
                        via="agent",
                        params=arguments,
                    )
            return json.loads(json.dumps(output, ensure_ascii=False, allow_nan=False))
        except TimeoutError:
            if budget.expired():
                raise _OutOfTime from None
            raise OpenClawError(f"{op_name} timed out") from None
        except OpenClawError:
            raise
        except (TypeError, ValueError) as exc:
            raise OpenClawError(f"{op_name} returned a value that is not JSON: {exc}") from None
        except Exception as exc:
            log.exception("tool %s raised unexpectedly", op_name, extra={"step_id": self.keyed.id})
            raise OpenClawError(f"{op_name} failed unexpectedly: {type(exc).__name__}: {exc}") from None

    async def _record(self, record_key: str, kind: str, record: dict[str, Any]) -> None:
        if self.journal is not None:
            await self.journal.agent_recorded(self.keyed, record_key, kind, record)

    def _stopped(self, budget: str, last: dict[str, Any] | None, turns: int) -> dict[str, Any]:
        """The end of a run cut short by a budget: the last text, or BudgetExhaustedError."""
        if self.spec.on_budget == "answer":
            return self._output(last, budget, turns)
        spent = {
            "max_turns": f"all {self.spec.max_turns} turns",
            "max_tokens": f"{self.usage['total_tokens']} of its {self.spec.max_tokens} tokens",
            "timeout": f"its {self.spec.timeout:g} s",
        }[budget]
        raise BudgetExhaustedError(
            f"{self.keyed.label()}: the agent used {spent} without answering ({budget})",
            budget=budget,
            turns=turns,
            usage=dict(self.usage),
        )

    def _output(self, last: dict[str, Any] | None, stopped: str, turns: int) -> dict[str, Any]:
        return {
            "content": last["content"] if last is not None else "",
            "stopped": stopped,
            "turns": turns,
            "tool_calls": [
                {
                    **{k: c.get(k) for k in ("turn", "name", "tool", "ok", "error", "duration_ms")},
                    "arguments": _brief(c.get("arguments")),
                }
                for c in self.calls
            ],
            "usage": dict(self.usage),
            "model": last["model"] if last is not None else self.spec.model,
            "finish_reason": last["finish_reason"] if last is not None else "",
        }


def _brief(arguments: Any) -> Any:
    """Arguments as the step's output shows them: as given, or cut to text if long (the record keeps them)."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    if len(text) <= ARGUMENTS_CHARS:
        return arguments
    return text[:ARGUMENTS_CHARS] + f"[... cut, {len(text) - ARGUMENTS_CHARS} more characters]"


def _assistant(record: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": record["content"], "tool_calls": record["tool_calls"]}


def _pb_message(message: dict[str, Any]) -> router_pb2.ChatMessage:
    return router_pb2.ChatMessage(
        role=message["role"],
        content=message.get("content") or "",
        tool_call_id=message.get("tool_call_id", ""),
        tool_calls=[
            router_pb2.ToolCall(id=c["id"], type="function", name=c["name"], arguments=c["arguments"])
            for c in message.get("tool_calls", ())
        ],
    )


def _problem(where: str, error: Any) -> str:
    """One pydantic error as ``where.path: message``, worded like validation's."""
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
    kind = error["type"]
    message = "required" if kind == "missing" else "unknown parameter" if kind == "extra_forbidden" else None
    return f"{where}{path}: {message or str(error['msg']).removeprefix('Value error, ')}"


def _loop_time(deadline: float) -> float:
    """A time.monotonic() deadline on the event loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())
