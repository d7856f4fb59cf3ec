"""Per-model behaviour table: injected latency and faults, and counts of what was served."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_MODEL = "*"
"""The model name whose behaviour applies to every model without its own settings."""

FaultKind = Literal["error", "rate_limited", "outage", "context_window", "content_policy"]
Outcome = Literal[
    "ok",
    "error",
    "rate_limited",
    "outage",
    "context_window",
    "content_policy",
    "stream_broken",
    "bad_request",
    "client_gone",
]


class Behaviour(BaseModel):
    """How the simulator treats requests for one model."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    latency_ms: float = Field(default=0.0, ge=0, le=600_000)
    token_latency_ms: float = Field(default=0.0, ge=0, le=60_000)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    error_status: int = Field(default=500, ge=400, le=599)
    fail_next: int = Field(default=0, ge=0)
    rate_limited: bool = False
    retry_after_s: int = Field(default=1, ge=0, le=86_400)
    outage: bool = False
    stream_fail_after: int | None = Field(default=None, ge=0)
    context_window: int | None = Field(default=None, ge=1)
    """Prompts of more simulated tokens than this are refused as too long for the model."""
    content_policy: bool = False
    """Every request is refused by the (simulated) content policy."""


class BehaviourError(ValueError):
    """A behaviour patch or file that does not validate; ``field`` names the culprit."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Fault:
    """An injected failure the provider route must answer with instead of a reply."""

    kind: FaultKind
    status: int
    retry_after_s: int | None = None
    prompt_tokens: int = 0
    context_window: int = 0


def validate_patch(patch: object, *, where: str = "") -> dict[str, Any]:
    """Check a partial behaviour (a JSON/YAML object) and return it as a plain dict."""
    if not isinstance(patch, Mapping):
        raise BehaviourError(None, f"{where}behaviour must be an object, got {type(patch).__name__}")
    data = {str(key): value for key, value in patch.items()}
    try:
        Behaviour.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            known = ", ".join(Behaviour.model_fields)
            raise BehaviourError(field, f"{where}unknown field {field!r} (known: {known})") from None
        raise BehaviourError(field, f"{where}{field}: {first['msg']}") from None
    return data


def load_behaviour_file(path: Path) -> dict[str, dict[str, Any]]:
    """Read ``models: {name: {...}}`` from a YAML file; a bad entry names file, model and field."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise BehaviourError(None, f"{path}: cannot read behaviour file: {exc}") from None
    if document is None:
        return {}
    if not isinstance(document, Mapping):
        raise BehaviourError(None, f"{path}: top level must be a mapping with a 'models' key")
    unknown = sorted(str(key) for key in document if key != "models")
    if unknown:
        raise BehaviourError(unknown[0], f"{path}: unknown top-level key {unknown[0]!r} (known: models)")
    models = document.get("models") or {}
    if not isinstance(models, Mapping):
        raise BehaviourError("models", f"{path}: 'models' must be a mapping of model name to behaviour")
    return {
        str(name): validate_patch(patch or {}, where=f"{path}: models.{name}: ")
        for name, patch in models.items()
    }


class BehaviourTable:
    """Behaviour per model (``*`` is the default), merged field by field over the ``*`` entry."""

    def __init__(self, initial: Mapping[str, Mapping[str, Any]] | None = None, *, seed: int = 0) -> None:
        self._seed = seed
        self._initial = {name: validate_patch(patch) for name, patch in (initial or {}).items()}
        self._patches: dict[str, dict[str, Any]] = {}
        self._fail_next: dict[str, int] = {}
        self._rngs: dict[str, random.Random] = {}
        self._effective: dict[str, Behaviour] = {}
        self._default = Behaviour()
        self.reset_all()

    def behaviour(self, model: str) -> Behaviour:
        """The effective behaviour of ``model`` (``fail_next`` excluded: see ``snapshot``)."""
        return self._effective.get(model, self._default)

    def decide(self, model: str, prompt_tokens: int = 0) -> tuple[Behaviour, Fault | None]:
        """Behaviour for one request and the fault to inject, if any (consumes ``fail_next``)."""
        behaviour = self._effective.get(model, self._default)
        if behaviour.outage:
            return behaviour, Fault("outage", 503)
        if behaviour.rate_limited:
            return behaviour, Fault("rate_limited", 429, behaviour.retry_after_s)
        if self._fail_next and self._take_fail_next(model):
            return behaviour, Fault("error", behaviour.error_status)
        if behaviour.error_rate > 0 and self._rng(model).random() < behaviour.error_rate:
            return behaviour, Fault("error", behaviour.error_status)
        if behaviour.content_policy:
            return behaviour, Fault("content_policy", 400)
        if behaviour.context_window is not None and prompt_tokens > behaviour.context_window:
            return behaviour, Fault("context_window", 400, None, prompt_tokens, behaviour.context_window)
        return behaviour, None

    def update(self, model: str, patch: object) -> dict[str, Any]:
        """Merge ``patch`` into the model's settings; raises ``BehaviourError`` and changes nothing if bad."""
        merged = validate_patch({**self._patches.get(model, {}), **validate_patch(patch)})
        self._apply(model, merged)
        self._rebuild()
        return self.describe(model)

    def reset(self, model: str) -> dict[str, Any]:
        """Put one model back to its start-up settings (the YAML file, else the defaults)."""
        self._patches.pop(model, None)
        self._fail_next.pop(model, None)
        self._rngs.pop(model, None)
        if model in self._initial:
            self._apply(model, dict(self._initial[model]))
        self._rebuild()
        return self.describe(model)

    def reset_all(self) -> None:
        """Put every model back to its start-up settings."""
        self._patches.clear()
        self._fail_next.clear()
        self._rngs.clear()
        for name, patch in self._initial.items():
            self._apply(name, dict(patch))
        self._rebuild()

    def describe(self, model: str) -> dict[str, Any]:
        """The effective behaviour of ``model`` as JSON, with its remaining ``fail_next``."""
        data = self.behaviour(model).model_dump()
        key = self._fail_next_key(model)
        data["fail_next"] = self._fail_next[key] if key is not None else 0
        return data

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every configured model (and ``*``) with its effective behaviour."""
        names = [DEFAULT_MODEL, *sorted(name for name in self._patches if name != DEFAULT_MODEL)]
        return {name: self.describe(name) for name in names}

    def configured_models(self) -> list[str]:
        """Model names with their own settings, ``*`` excluded."""
        return sorted(name for name in self._patches if name != DEFAULT_MODEL)

    def _apply(self, model: str, patch: dict[str, Any]) -> None:
        fail_next = patch.pop("fail_next", None)
        if fail_next is not None:
            if fail_next > 0:
                self._fail_next[model] = fail_next
            else:
                self._fail_next.pop(model, None)
        self._patches[model] = patch
        self._rngs.pop(model, None)

    def _rebuild(self) -> None:
        base = self._patches.get(DEFAULT_MODEL, {})
        self._default = Behaviour.model_validate(base)
        self._effective = {
            name: Behaviour.model_validate({**base, **patch}) for name, patch in self._patches.items()
        }

    def _fail_next_key(self, model: str) -> str | None:
        if model in self._fail_next:
            return model
        if DEFAULT_MODEL in self._fail_next:
            return DEFAULT_MODEL
        return None

    def _take_fail_next(self, model: str) -> bool:
        key = self._fail_next_key(model)
        if key is None:
            return False
        remaining = self._fail_next[key] - 1
        if remaining > 0:
            self._fail_next[key] = remaining
        else:
            del self._fail_next[key]
        return True

    def _rng(self, model: str) -> random.Random:
        # Models without their own settings share the default's generator so the table stays bounded.
        key = model if model in self._patches else DEFAULT_MODEL
        rng = self._rngs.get(key)
        if rng is None:
            rng = self._rngs[key] = random.Random(f"{self._seed}:{key}")
        return rng


class ChunkSink(Protocol):
    """Where a streamed reply goes (an aiohttp ``StreamResponse`` in practice)."""

    async def write(self, data: bytes) -> None: ...


async def play(sink: ChunkSink, chunks: Sequence[bytes], behaviour: Behaviour) -> bool:
    """Write ``chunks`` paced by ``token_latency_ms``; False if ``stream_fail_after`` cut them short."""
    delay = behaviour.token_latency_ms / 1000
    fail_after = behaviour.stream_fail_after
    if not delay and (fail_after is None or fail_after >= len(chunks)):
        await sink.write(b"".join(chunks))
        return True
    for index, chunk in enumerate(chunks):
        if fail_after is not None and index >= fail_after:
            return False
        if index and delay:
            await asyncio.sleep(delay)
        await sink.write(chunk)
    return True


class Stats:
    """Requests served, per model and per outcome."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, Outcome], int] = {}

    def record(self, model: str, outcome: Outcome) -> None:
        """Count one request."""
        key = (model, outcome)
        self._counts[key] = self._counts.get(key, 0) + 1

    def count(self, model: str | None = None, outcome: Outcome | None = None) -> int:
        """Requests matching ``model`` and ``outcome`` (``None`` matches any)."""
        return sum(
            n
            for (m, o), n in self._counts.items()
            if (model is None or m == model) and (outcome is None or o == outcome)
        )

    def reset(self) -> None:
        """Forget every count."""
        self._counts.clear()

    def snapshot(self) -> dict[str, Any]:
        """Totals, per outcome and per model, as JSON."""
        outcomes: dict[str, int] = {}
        models: dict[str, dict[str, Any]] = {}
        for (model, outcome), n in sorted(self._counts.items()):
            outcomes[outcome] = outcomes.get(outcome, 0) + n
            entry = models.setdefault(model, {"requests": 0, "outcomes": {}})
            entry["requests"] += n
            entry["outcomes"][outcome] = n
        return {"requests": sum(outcomes.values()), "outcomes": outcomes, "models": models}
