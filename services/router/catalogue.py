"""The model catalogue: prices, context windows and capabilities of well-known models, extendable by a file.

The bundled ``model_catalogue.yaml`` covers the six providers' well-known models; a user file
(``OPENCLAW_ROUTER_CATALOGUE``) adds entries, or changes the fields it sets of one with the same provider and
name. A routable model finds its entry by provider and ``provider_model`` (or its router name, or an alias);
a model whose definition carries its own prices or window (``input_cost_per_token``,
``output_cost_per_token``, ``context_window``; 0 means unset) wins over the catalogue.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.errors import InvalidInputError
from services.router.chat import Message

BUNDLED_FILE = Path(__file__).with_name("model_catalogue.yaml")
Capability = Literal["tools", "vision", "json_mode", "streaming", "embeddings"]
CHARS_PER_TOKEN = 4
"""The estimate's divisor: about four characters per token in English text for the GPT, Claude and Gemini
tokenizers. Dense text (code, digits, non-Latin scripts) has more tokens per character, so the estimate errs
low there and the provider's own check still applies."""
MESSAGE_OVERHEAD_TOKENS = 4
"""Tokens each message costs beyond its text (role and separators), as OpenAI documents for its chat models."""
_SPACES = re.compile(r"\s+")


class _EntryConfig(BaseModel):
    """One catalogue entry as written in YAML, validated field by field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=256)
    provider: Literal["openai", "anthropic", "gemini", "ollama", "azure", "cohere"]
    aliases: tuple[str, ...] = ()
    input_per_mtok: float = Field(0.0, ge=0, le=100_000)
    output_per_mtok: float = Field(0.0, ge=0, le=100_000)
    context_window: int | None = Field(None, ge=1, le=100_000_000)
    max_output_tokens: int | None = Field(None, ge=1, le=100_000_000)
    capabilities: tuple[Capability, ...] = ()


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """What the catalogue knows about one model of one provider."""

    name: str
    provider: str
    aliases: tuple[str, ...] = ()
    input_per_mtok: float = 0.0
    """USD per million input (prompt) tokens."""
    output_per_mtok: float = 0.0
    """USD per million output (completion) tokens."""
    context_window: int | None = None
    max_output_tokens: int | None = None
    capabilities: frozenset[str] = frozenset()

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for this many tokens at the list price."""
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1_000_000


class Catalogue:
    """Entries by provider and name (aliases included); immutable once built."""

    def __init__(self, entries: Iterable[CatalogueEntry] = ()) -> None:
        by_key: dict[tuple[str, str], CatalogueEntry] = {}
        for entry in entries:  # later entries (the user's file) replace earlier ones
            by_key[(entry.provider, entry.name)] = entry
        index: dict[tuple[str, str], CatalogueEntry] = {}
        for entry in by_key.values():
            for alias in entry.aliases:
                index.setdefault((entry.provider, alias), entry)
        index.update(by_key)  # a name always wins over another entry's alias
        self.entries: tuple[CatalogueEntry, ...] = tuple(by_key.values())
        self._index: Mapping[tuple[str, str], CatalogueEntry] = MappingProxyType(index)

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, provider: str, *names: str) -> CatalogueEntry | None:
        """The entry of the first name known for this provider (Azure also matches OpenAI's names)."""
        providers = (provider, "openai") if provider == "azure" else (provider,)
        for name in names:
            for candidate in providers:
                entry = self._index.get((candidate, name))
                if entry is not None:
                    return entry
        return None

    def for_model(self, spec: Any, model_name: str = "") -> CatalogueEntry | None:
        """The entry of a routable model or one of its deployments (anything with provider and provider_model;
        ``model_name`` is the router's name for it, default ``spec.name``)."""
        found = self.find(spec.provider, spec.provider_model, model_name or spec.name)
        # A model's own fields (0 = not set) win over its catalogue entry.
        own_in = float(getattr(spec, "input_cost_per_token", 0) or 0) * 1_000_000
        own_out = float(getattr(spec, "output_cost_per_token", 0) or 0) * 1_000_000
        own_window = int(getattr(spec, "context_window", 0) or 0)
        if not (own_in or own_out or own_window):
            return found
        base = found or CatalogueEntry(spec.name, spec.provider)
        return CatalogueEntry(
            name=base.name,
            provider=base.provider,
            aliases=base.aliases,
            input_per_mtok=own_in or base.input_per_mtok,
            output_per_mtok=own_out or base.output_per_mtok,
            context_window=own_window or base.context_window,
            max_output_tokens=base.max_output_tokens,
            capabilities=base.capabilities,
        )


def parse_catalogue(text: str, *, source: str) -> list[CatalogueEntry]:
    """Entries from YAML ``models: [...]``; InvalidInputError names the file, the entry and the field."""
    return [entry for entry, _ in _parse(text, source=source)]


def _parse(text: str, *, source: str) -> list[tuple[CatalogueEntry, frozenset[str]]]:
    """Entries with the fields each one sets."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"{source}: not valid YAML: {exc}", field="catalogue") from None
    if document is None:
        return []
    if not isinstance(document, dict) or set(document) - {"models"}:
        raise InvalidInputError(
            f"{source}: the top level must be a mapping with one key, 'models'", field="models"
        )
    raw = document.get("models") or []
    if not isinstance(raw, list):
        raise InvalidInputError(f"{source}: models: must be a list of entries", field="models")
    entries: list[tuple[CatalogueEntry, frozenset[str]]] = []
    for index, item in enumerate(raw):
        where = f"models[{index}]"
        if not isinstance(item, dict):
            raise InvalidInputError(f"{source}: {where}: must be a mapping", field=where)
        try:
            cfg = _EntryConfig.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(part) for part in first["loc"])
            label = f"{where} ({item.get('name')!r})" if item.get("name") else where
            raise InvalidInputError(
                f"{source}: {label}.{loc}: {first['msg']}", field=f"{where}.{loc}"
            ) from None
        entry = CatalogueEntry(
            name=cfg.name,
            provider=cfg.provider,
            aliases=cfg.aliases,
            input_per_mtok=cfg.input_per_mtok,
            output_per_mtok=cfg.output_per_mtok,
            context_window=cfg.context_window,
            max_output_tokens=cfg.max_output_tokens,
            capabilities=frozenset(cfg.capabilities),
        )
        entries.append((entry, frozenset(cfg.model_fields_set)))
    return entries


def load_catalogue(user_file: str | Path | None = None) -> Catalogue:
    """The bundled catalogue, extended by ``user_file`` if given: a user entry with the provider and name of a
    bundled one changes only the fields it sets."""
    entries = {
        (entry.provider, entry.name): entry
        for entry in parse_catalogue(BUNDLED_FILE.read_text(encoding="utf-8"), source=str(BUNDLED_FILE))
    }
    if user_file:
        path = Path(user_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidInputError(f"cannot read model catalogue {path}: {exc}", field="catalogue") from None
        for entry, fields_set in _parse(text, source=str(path)):
            base = entries.get((entry.provider, entry.name))
            if base is not None:
                changed = {name: getattr(entry, name) for name in fields_set}
                entry = dataclasses.replace(base, **changed)
            entries[(entry.provider, entry.name)] = entry
    return Catalogue(entries.values())


def estimate_prompt_tokens(messages: Sequence[Message], *, collapse: bool = True) -> int:
    """A tokenizer-free estimate of a chat prompt's size (see CHARS_PER_TOKEN); runs of spaces count once
    (``collapse=False`` skips that pass and gives a cheap upper bound of the same estimate)."""
    total = 0
    for message in messages:
        chars = len(_SPACES.sub(" ", message.content)) if collapse else len(message.content)
        chars += sum(len(call.name) + len(call.arguments) for call in message.tool_calls)
        total += math.ceil(chars / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS
    return total


def ensure_fits(model: str, windows: Sequence[tuple[str, int | None]], messages: Sequence[Message]) -> None:
    """Refuse a prompt that fits none of the candidates' context windows (``(name, window)`` of the model and its
    fallbacks, or of their deployments; ``None`` is an unknown window, which might take it, so then it goes ahead)."""
    if not windows or any(window is None for _, window in windows):
        return
    known = [(name, window) for name, window in windows if window is not None]
    largest = max(window for _, window in known)
    if estimate_prompt_tokens(messages, collapse=False) <= largest:
        return  # the cheap bound already fits: most requests stop here
    prompt_tokens = estimate_prompt_tokens(messages)
    if prompt_tokens <= largest:
        return
    shown = ", ".join(f"{name}: {window}" for name, window in known)
    raise InvalidInputError(
        f"messages: the prompt is about {prompt_tokens} tokens, more than the context window of model "
        f"{model!r} and its fallbacks ({shown} tokens)",
        field="messages",
        model=model,
        prompt_tokens=prompt_tokens,
        context_windows=dict(known),
    )
