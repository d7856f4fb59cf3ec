"""Deployments: the endpoints that serve one model name (a model group), each with its own key, weight and limits.

A model entry either describes one endpoint itself (the original form, kept working as a single deployment) or
lists ``deployments``; each deployment inherits what it does not set from the model entry (provider, endpoint,
provider_model, key, limits, prices), so a group of identical replicas is a short list of endpoints. What a
definition is resolved against (the environment, the simulator, provider defaults) lives here too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.common.errors import InvalidInputError

ProviderName = Literal["openai", "anthropic", "gemini", "ollama", "azure", "cohere"]

DEFAULT_ENDPOINTS: Mapping[str, str] = MappingProxyType(
    {
        "openai": "https://api.openai.com/v1",
        "anthropic": "https://api.anthropic.com",
        "gemini": "https://generativelanguage.googleapis.com",
        "ollama": "http://localhost:11434",
        "cohere": "https://api.cohere.com",
    }
)
"""Where each provider lives when a model names no endpoint; Azure has none (each resource has its own URL)."""
DEFAULT_API_KEY_ENV_PATTERN = r"^[A-Z][A-Z0-9_]*_API_KEY$"
"""What ``api_key_env`` may name: provider key variables, never the router's other settings or secrets."""


class ModelConfigError(InvalidInputError):
    """A model definition that does not validate; names the model and the field."""

    def __init__(self, model: str, field_name: str, problem: str, *, source: str = "") -> None:
        where = f"{source}: " if source else ""
        subject = f"model {model!r}" if model else "model table"
        super().__init__(f"{where}{subject}: {field_name}: {problem}", model=model, field=field_name)
        self.model = model
        self.field = field_name


@dataclass(frozen=True, slots=True)
class SpecContext:
    """What model definitions are resolved against: the environment and the simulator's address."""

    env: Mapping[str, str] = field(default_factory=dict)
    simulator_url: str = ""
    api_key_env_pattern: str = DEFAULT_API_KEY_ENV_PATTERN
    """Which variables ``api_key_env`` may name; the environment also holds the router's own secrets."""

    def is_simulator(self, endpoint: str) -> bool:
        """Whether the endpoint is the bundled provider simulator."""
        base = self.simulator_url.rstrip("/")
        return bool(base) and (endpoint == base or endpoint.startswith(base + "/"))


SINGLE = "default"
"""Name of the one deployment of a model defined in the single-endpoint form."""

_DEPLOYMENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_DEPLOYMENTS = 64


@dataclass(frozen=True, slots=True)
class Deployment:
    """One endpoint of a model group: where it lives, its key, its share of traffic and its limits."""

    name: str
    provider: ProviderName
    endpoint: str
    provider_model: str
    weight: float = 1.0
    """Share of new work relative to the group's other deployments; 0 sends it none (drained)."""
    max_concurrency: int = 10
    rpm: int = 0
    """Requests per minute the provider allows this deployment (0: no limit known)."""
    tpm: int = 0
    """Tokens per minute the provider allows this deployment (0: no limit known)."""
    input_cost_per_token: float = 0.0
    output_cost_per_token: float = 0.0
    context_window: int = 0
    """Longest prompt plus completion in tokens (0: unknown, never refused up front)."""
    api_key: str = field(default="", repr=False)
    api_key_env: str = ""
    timeout_seconds: float = 60.0
    simulated: bool = False
    credential: str = field(default="", repr=False, compare=False)

    @property
    def has_api_key(self) -> bool:
        """Whether calls carry a key."""
        return bool(self.credential)


DEPLOYMENT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Deployment) if f.name != "credential")
INHERITED: tuple[str, ...] = (
    "provider",
    "provider_model",
    "max_concurrency",
    "rpm",
    "tpm",
    "input_cost_per_token",
    "output_cost_per_token",
    "context_window",
    "api_key",
    "api_key_env",
    "timeout_seconds",
)
"""Fields a deployment takes from its model entry when it does not set them (the endpoint only with the provider;
``simulated`` never: each deployment's label follows its own endpoint)."""


class DeploymentConfig(BaseModel):
    """The input form of one deployment, validated field by field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_DEPLOYMENT_NAME)
    provider: ProviderName = "openai"
    endpoint: str = ""
    provider_model: str = Field("", max_length=256)
    weight: float = Field(1.0, ge=0, le=1000)
    max_concurrency: int = Field(10, ge=1, le=100_000)
    rpm: int = Field(0, ge=0, le=1_000_000_000)
    tpm: int = Field(0, ge=0, le=10**12)
    input_cost_per_token: float = Field(0.0, ge=0, le=1.0)
    output_cost_per_token: float = Field(0.0, ge=0, le=1.0)
    context_window: int = Field(0, ge=0, le=100_000_000)
    api_key: str = Field("", max_length=4096)
    api_key_env: str = Field("", pattern=r"^([A-Za-z_][A-Za-z0-9_]{0,127})?$")
    timeout_seconds: float = Field(60.0, gt=0, le=3600)
    simulated: bool = False

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        value = value.strip()
        if value and not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


def merged_entry(model: Mapping[str, Any], entry: Mapping[str, Any], index: int) -> dict[str, Any]:
    """A deployment's definition with what it leaves unset taken from its model entry."""
    data = {key: model[key] for key in INHERITED if model.get(key) not in (None, "")}
    if model.get("endpoint") and entry.get("provider", data.get("provider")) == data.get("provider"):
        data["endpoint"] = model["endpoint"]  # another provider's deployment uses that provider's default
    data.update(entry)
    data.setdefault("name", str(index))
    return data


def deployment_config(deployment: Deployment) -> dict[str, Any]:
    """The definition a deployment was built from, secrets included."""
    return {name: getattr(deployment, name) for name in DEPLOYMENT_FIELDS}


def build_deployments(
    model: str, entries: Sequence[Any], data: Mapping[str, Any], ctx: SpecContext, source: str = ""
) -> tuple[Deployment, ...]:
    """The listed deployments of a model group, each validated with its path (``deployments[1].weight``)."""
    built: list[Deployment] = []
    for index, entry in enumerate(entries):
        where = f"deployments[{index}]"
        if not isinstance(entry, Mapping):
            raise ModelConfigError(model, where, "must be a mapping", source=source)
        try:
            dcfg = DeploymentConfig.model_validate(merged_entry(data, entry, index))
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(part) for part in first["loc"]) or "?"
            problem = (
                f"unknown field (known: {', '.join(DEPLOYMENT_FIELDS)})"
                if first["type"] == "extra_forbidden"
                else first["msg"]
            )
            raise ModelConfigError(model, f"{where}.{loc}", problem, source=source) from None
        if any(d.name == dcfg.name for d in built):
            raise ModelConfigError(model, f"{where}.name", f"{dcfg.name!r} is used twice", source=source)
        if dcfg.api_key_env and not re.fullmatch(ctx.api_key_env_pattern, dcfg.api_key_env):
            raise ModelConfigError(
                model,
                f"{where}.api_key_env",
                f"{dcfg.api_key_env!r} is not an allowed key variable: the name must match "
                f"{ctx.api_key_env_pattern} (OPENCLAW_ROUTER_API_KEY_ENV_PATTERN)",
                source=source,
            )
        endpoint = dcfg.endpoint or DEFAULT_ENDPOINTS.get(dcfg.provider, "")
        if not endpoint:
            raise ModelConfigError(
                model, f"{where}.endpoint", f"required for provider {dcfg.provider!r}", source=source
            )
        built.append(
            Deployment(
                name=dcfg.name,
                provider=dcfg.provider,
                endpoint=endpoint,
                provider_model=dcfg.provider_model or model,
                weight=dcfg.weight,
                max_concurrency=dcfg.max_concurrency,
                rpm=dcfg.rpm,
                tpm=dcfg.tpm,
                input_cost_per_token=dcfg.input_cost_per_token,
                output_cost_per_token=dcfg.output_cost_per_token,
                context_window=dcfg.context_window,
                api_key=dcfg.api_key,
                api_key_env=dcfg.api_key_env,
                timeout_seconds=dcfg.timeout_seconds,
                simulated=dcfg.simulated or ctx.is_simulator(endpoint),
                credential=dcfg.api_key or (ctx.env.get(dcfg.api_key_env, "") if dcfg.api_key_env else ""),
            )
        )
    if built and not any(d.weight > 0 for d in built):
        raise ModelConfigError(
            model, "deployments", "at least one deployment needs a weight above 0", source=source
        )
    return tuple(built)
