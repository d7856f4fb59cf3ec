"""The model table: validated model specs in a versioned, immutable snapshot swapped atomically on change.

A request takes ``registry.snapshot`` once and walks its fallback chain in that snapshot, so admin calls
made while it runs never change what it sees. Every change builds a whole new table, validates it as a
whole (fallback references included) and replaces the old one in a single assignment.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.common.errors import AlreadyExistsError, NotFoundError
from services.router.deployments import (
    DEFAULT_API_KEY_ENV_PATTERN,
    DEFAULT_ENDPOINTS,
    MAX_DEPLOYMENTS,
    SINGLE,
    Deployment,
    ModelConfigError,
    ProviderName,
    SpecContext,
    build_deployments,
    deployment_config,
)

__all__ = [
    "CONFIG_FIELDS",
    "DEFAULT_API_KEY_ENV_PATTERN",
    "DEFAULT_ENDPOINTS",
    "DEFAULT_MODELS_FILE",
    "ModelConfigError",
    "ModelSpec",
    "ModelTable",
    "Registry",
    "SpecContext",
    "build_spec",
    "load_models",
    "parse_models",
    "redact_url",
    "spec_config",
    "substitute",
    "validate_table",
]

DEFAULT_MODELS_FILE = Path(__file__).with_name("default_models.yaml")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One routable model: where it lives, how it is called and what to try when it fails."""

    name: str
    provider: ProviderName
    endpoint: str
    provider_model: str
    max_concurrency: int = 10
    fallback_models: tuple[str, ...] = ()
    api_key: str = field(default="", repr=False)
    """The key as configured; write-only (never logged, never returned)."""
    api_key_env: str = ""
    """Name of an environment variable holding the key (read when the model is loaded or changed)."""
    timeout_seconds: float = 60.0
    simulated: bool = False
    credential: str = field(default="", repr=False, compare=False)
    """The key actually sent: ``api_key``, else the value of ``api_key_env``."""
    rpm: int = 0
    tpm: int = 0
    input_cost_per_token: float = 0.0
    output_cost_per_token: float = 0.0
    context_window: int = 0
    deployments: tuple[Deployment, ...] = ()
    """The endpoints of a model group; empty for the single-endpoint form (see ``targets``)."""
    deployment_entries: tuple[Mapping[str, Any], ...] = field(default=(), repr=False, compare=False)
    """The deployments as defined (only what each sets itself), so later model-level changes still reach them."""

    @property
    def has_api_key(self) -> bool:
        """Whether calls carry a key."""
        return bool(self.credential)

    @property
    def targets(self) -> tuple[Deployment, ...]:
        """The deployments that serve this model: the listed ones, or the model's own endpoint as one."""
        if self.deployments:
            return self.deployments
        return (
            Deployment(
                name=SINGLE,
                provider=self.provider,
                endpoint=self.endpoint,
                provider_model=self.provider_model,
                max_concurrency=self.max_concurrency,
                rpm=self.rpm,
                tpm=self.tpm,
                input_cost_per_token=self.input_cost_per_token,
                output_cost_per_token=self.output_cost_per_token,
                context_window=self.context_window,
                api_key=self.api_key,
                api_key_env=self.api_key_env,
                timeout_seconds=self.timeout_seconds,
                simulated=self.simulated,
                credential=self.credential,
            ),
        )

    @property
    def shown_endpoint(self) -> str:
        """The endpoint as ListModels and logs show it: no userinfo, no query string."""
        return redact_url(self.endpoint)


def redact_url(url: str) -> str:
    """``url`` without the parts that may carry credentials: userinfo, query string and fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


CONFIG_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(ModelSpec) if f.name not in ("credential", "deployment_entries")
)
"""Fields a model definition (YAML entry, admin call) may set."""

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$"


class _ModelConfig(BaseModel):
    """The input form of a model definition, validated field by field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME)
    provider: ProviderName = "openai"
    endpoint: str = ""
    provider_model: str = Field("", max_length=256)
    max_concurrency: int = Field(10, ge=1, le=100_000)
    fallback_models: tuple[str, ...] = ()
    api_key: str = Field("", max_length=4096)
    api_key_env: str = Field("", pattern=r"^([A-Za-z_][A-Za-z0-9_]{0,127})?$")
    timeout_seconds: float = Field(60.0, gt=0, le=3600)
    simulated: bool = False
    rpm: int = Field(0, ge=0, le=1_000_000_000)
    tpm: int = Field(0, ge=0, le=10**12)
    input_cost_per_token: float = Field(0.0, ge=0, le=1.0)
    output_cost_per_token: float = Field(0.0, ge=0, le=1.0)
    context_window: int = Field(0, ge=0, le=100_000_000)
    deployments: tuple[dict[str, Any], ...] = Field((), max_length=MAX_DEPLOYMENTS)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        value = value.strip()
        if value and not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("fallback_models")
    @classmethod
    def _fallbacks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for name in value:
            if not isinstance(name, str) or not name:
                raise ValueError("must be a list of model names")
            seen.setdefault(name, None)
        return tuple(seen)


def build_spec(data: Mapping[str, Any], ctx: SpecContext, *, source: str = "") -> ModelSpec:
    """Validate one model definition and resolve its defaults and key; ModelConfigError names the field."""
    name = str(data.get("name", "") or "")
    try:
        cfg = _ModelConfig.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"]) or "?"
        if first["type"] == "extra_forbidden":
            problem = f"unknown field (known: {', '.join(CONFIG_FIELDS)})"
        elif loc == "name":
            problem = f"must match {_NAME} (got {data.get('name')!r})"
        else:
            problem = first["msg"]
        raise ModelConfigError(name, loc, problem, source=source) from None
    if cfg.api_key_env and not re.fullmatch(ctx.api_key_env_pattern, cfg.api_key_env):
        raise ModelConfigError(
            cfg.name,
            "api_key_env",
            f"{cfg.api_key_env!r} is not an allowed key variable: the name must match "
            f"{ctx.api_key_env_pattern} (OPENCLAW_ROUTER_API_KEY_ENV_PATTERN)",
            source=source,
        )
    deployments = build_deployments(cfg.name, cfg.deployments, data, ctx, source)
    endpoint = cfg.endpoint or DEFAULT_ENDPOINTS.get(cfg.provider, "")
    if not endpoint and deployments:
        endpoint = deployments[0].endpoint
    if not endpoint:
        raise ModelConfigError(
            cfg.name, "endpoint", f"required for provider {cfg.provider!r} (its resource URL)", source=source
        )
    credential = cfg.api_key or (ctx.env.get(cfg.api_key_env, "") if cfg.api_key_env else "")
    return ModelSpec(
        name=cfg.name,
        provider=cfg.provider,
        endpoint=endpoint,
        provider_model=cfg.provider_model or cfg.name,
        max_concurrency=cfg.max_concurrency,
        fallback_models=tuple(f for f in cfg.fallback_models if f != cfg.name),  # never itself
        api_key=cfg.api_key,
        api_key_env=cfg.api_key_env,
        timeout_seconds=cfg.timeout_seconds,
        simulated=cfg.simulated or ctx.is_simulator(endpoint),
        credential=credential,
        rpm=cfg.rpm,
        tpm=cfg.tpm,
        input_cost_per_token=cfg.input_cost_per_token,
        output_cost_per_token=cfg.output_cost_per_token,
        context_window=cfg.context_window,
        deployments=deployments,
        deployment_entries=tuple(dict(entry) for entry in cfg.deployments),
    )


def spec_config(spec: ModelSpec) -> dict[str, Any]:
    """The definition a spec was built from (input to build_spec), secrets included."""
    config = {name: getattr(spec, name) for name in CONFIG_FIELDS}
    config["deployments"] = spec.deployment_entries or tuple(deployment_config(d) for d in spec.deployments)
    return config


class ModelTable:
    """One immutable version of the model table."""

    __slots__ = ("_chains", "models", "version")

    def __init__(self, version: int, specs: Iterable[ModelSpec]) -> None:
        self.version = version
        self.models: Mapping[str, ModelSpec] = MappingProxyType({spec.name: spec for spec in specs})
        self._chains: dict[str, tuple[ModelSpec, ...]] = {}

    def __len__(self) -> int:
        return len(self.models)

    def __contains__(self, name: object) -> bool:
        return name in self.models

    def get(self, name: str) -> ModelSpec | None:
        """The spec named ``name``, if any."""
        return self.models.get(name)

    def require(self, name: str) -> ModelSpec:
        """The spec named ``name``; NotFoundError lists the models that do exist."""
        spec = self.models.get(name)
        if spec is None:
            available = sorted(self.models)
            raise NotFoundError(
                f"model {name!r} not found; available models: {', '.join(available) or '(none)'}",
                model=name,
                available=available,
            )
        return spec

    def chain(self, name: str) -> tuple[ModelSpec, ...]:
        """The model then its fallbacks, breadth first, each model at most once (cycles are harmless)."""
        cached = self._chains.get(name)
        if cached is not None:
            return cached
        first = self.require(name)
        order: dict[str, ModelSpec] = {first.name: first}
        frontier = [first]
        while frontier:
            nxt: list[ModelSpec] = []
            for spec in frontier:
                for fallback in spec.fallback_models:
                    candidate = self.models.get(fallback)
                    if candidate is not None and candidate.name not in order:
                        order[candidate.name] = candidate
                        nxt.append(candidate)
            frontier = nxt
        chain = tuple(order.values())
        self._chains[name] = chain  # benign race: every writer computes the same tuple
        return chain


def validate_table(specs: Sequence[ModelSpec], *, source: str = "") -> None:
    """Whole-table checks: unique names and fallbacks that name existing models."""
    names: set[str] = set()
    for spec in specs:
        if spec.name in names:
            raise ModelConfigError(spec.name, "name", "defined more than once", source=source)
        names.add(spec.name)
    for spec in specs:
        for fallback in spec.fallback_models:
            if fallback not in names:
                raise ModelConfigError(
                    spec.name,
                    "fallback_models",
                    f"unknown model {fallback!r} (available: {', '.join(sorted(names))})",
                    source=source,
                )


Listener = Callable[[ModelTable, ModelTable], None]


class Registry:
    """Holds the current ModelTable; add, update and remove build and swap in a new version."""

    def __init__(self, specs: Sequence[ModelSpec] = (), *, ctx: SpecContext | None = None) -> None:
        validate_table(specs)
        self.ctx = ctx or SpecContext()
        self._lock = threading.Lock()
        self._snapshot = ModelTable(1, specs)
        self._listeners: list[Listener] = []

    @property
    def snapshot(self) -> ModelTable:
        """The table in force now; hold on to it for the whole of a request."""
        return self._snapshot

    def subscribe(self, listener: Listener) -> None:
        """Call listener(old, new) after every swap."""
        self._listeners.append(listener)

    def add(self, data: Mapping[str, Any]) -> ModelSpec:
        """Register a model from its definition; AlreadyExistsError if the name is taken."""
        spec = build_spec(data, self.ctx)
        with self._lock:
            table = self._snapshot
            if spec.name in table:
                raise AlreadyExistsError(f"model {spec.name!r} already exists", model=spec.name)
            self._swap(table, [*table.models.values(), spec])
        return spec

    def update(self, name: str, changes: Mapping[str, Any]) -> ModelSpec:
        """Change the given fields of a model; other fields keep their values."""
        unknown = sorted(set(changes) - set(CONFIG_FIELDS))
        if unknown:
            raise ModelConfigError(name, unknown[0], f"not a model field (known: {', '.join(CONFIG_FIELDS)})")
        if "name" in changes and changes["name"] != name:
            raise ModelConfigError(name, "name", "a model cannot be renamed; add a new one and remove this")
        with self._lock:
            table = self._snapshot
            current = table.require(name)
            merged = {**spec_config(current), **changes}
            if (
                "endpoint" not in changes
                and merged["provider"] != current.provider
                and current.endpoint == DEFAULT_ENDPOINTS.get(current.provider)
            ):
                merged["endpoint"] = ""  # follow the new provider's default
            if "endpoint" in changes and "simulated" not in changes:
                merged["simulated"] = False  # re-detected from the new endpoint
            spec = build_spec(merged, self.ctx)
            self._swap(table, [spec if s.name == name else s for s in table.models.values()])
        return spec

    def remove(self, name: str) -> ModelTable:
        """Unregister a model; refused while another model names it as a fallback."""
        with self._lock:
            table = self._snapshot
            table.require(name)
            users = sorted(
                s.name for s in table.models.values() if name in s.fallback_models and s.name != name
            )
            if users:
                raise ModelConfigError(
                    name,
                    "name",
                    f"is a fallback of {', '.join(users)}; remove it from their fallback_models first",
                )
            return self._swap(table, [s for s in table.models.values() if s.name != name])

    def replace(self, specs: Sequence[ModelSpec]) -> ModelTable:
        """Swap in a whole new table (e.g. a reloaded file); a bad table changes nothing."""
        with self._lock:
            return self._swap(self._snapshot, list(specs))

    def _swap(self, old: ModelTable, specs: list[ModelSpec]) -> ModelTable:
        validate_table(specs)
        new = ModelTable(old.version + 1, specs)
        self._snapshot = new
        for listener in self._listeners:
            listener(old, new)
        return new


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute(value: str, env: Mapping[str, str], *, where: str = "") -> str:
    """Expand ``${VAR}`` (must be set) and ``${VAR:-default}`` (default when unset or empty)."""

    def expand(match: re.Match[str]) -> str:
        var, default = match.group(1), match.group(2)
        current = env.get(var, "")
        if current:
            return current
        if default is not None:
            return default
        if var in env:
            return ""
        raise KeyError(f"{where}environment variable {var} is not set (write ${{{var}:-}} to allow that)")

    return _VAR.sub(expand, value)


def _expand(node: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(node, str):
        return substitute(node, env, where=where)
    if isinstance(node, list):
        return [_expand(item, env, where) for item in node]
    if isinstance(node, dict):
        return {key: _expand(value, env, where) for key, value in node.items()}
    return node


def parse_models(text: str, ctx: SpecContext, *, source: str = "<models>") -> list[ModelSpec]:
    """Model specs from YAML ``models: [{name: ..., ...}]``; a bad entry raises ModelConfigError."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelConfigError("", "yaml", f"not valid YAML: {exc}", source=source) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ModelConfigError(
            "", "models", "top level must be a mapping with a 'models' list", source=source
        )
    unknown = sorted(str(key) for key in document if key != "models")
    if unknown:
        raise ModelConfigError("", unknown[0], "unknown top-level key (known: models)", source=source)
    entries = document.get("models") or []
    if not isinstance(entries, list):
        raise ModelConfigError("", "models", "must be a list of model definitions", source=source)
    specs: list[ModelSpec] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ModelConfigError("", f"models[{index}]", "must be a mapping", source=source)
        label = str(entry.get("name") or f"models[{index}]")
        requires = entry.pop("requires_env", None) or []
        if isinstance(requires, str):
            requires = [requires]
        if not isinstance(requires, list):
            raise ModelConfigError(label, "requires_env", "must be a variable name or a list", source=source)
        if not all(ctx.env.get(str(var)) for var in requires):
            continue
        try:
            expanded = _expand(entry, ctx.env, "")
        except KeyError as exc:
            raise ModelConfigError(label, "${...}", str(exc.args[0]), source=source) from None
        specs.append(build_spec(expanded, ctx, source=source))
    validate_table(specs, source=source)
    return specs


def load_models(path: str | Path | None, ctx: SpecContext) -> list[ModelSpec]:
    """The model table from ``path``, or the bundled default table when path is empty."""
    file = Path(path) if path else DEFAULT_MODELS_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelConfigError("", "models", f"cannot read model table: {exc}", source=str(file)) from None
    return parse_models(text, ctx, source=str(file))
