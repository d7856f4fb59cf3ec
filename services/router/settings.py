"""Settings of the router process: where it listens, which model table it loads, provider keys and limits."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, NonNegativeFloat, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.errors import InvalidInputError
from services.common.settings import CommonSettings
from services.common.tenants import load_file
from services.router.registry import DEFAULT_API_KEY_ENV_PATTERN


def _env(name: str) -> AliasChoices:
    """Read the field from ``OPENCLAW_ROUTER_<NAME>`` (the shared prefix stays for shared fields)."""
    return AliasChoices(f"OPENCLAW_ROUTER_{name.upper()}")


class RouterSettings(CommonSettings):
    """Read once at start-up; router fields come from ``OPENCLAW_ROUTER_*`` variables.

    Shared fields keep their ``OPENCLAW_*`` names (``OPENCLAW_OTLP_ENDPOINT``, ``OPENCLAW_SIMULATOR_URL``);
    provider keys are the providers' own ``OPENAI_API_KEY`` and ``ANTHROPIC_API_KEY``.
    """

    model_config = SettingsConfigDict(
        env_prefix="OPENCLAW_", extra="ignore", frozen=True, validate_by_name=True, validate_by_alias=True
    )

    listen: str = Field(
        "127.0.0.1:50051", validation_alias=_env("listen"), pattern=r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$"
    )
    metrics_host: str = Field("127.0.0.1", validation_alias=_env("metrics_host"))
    metrics_port: int = Field(9102, ge=0, le=65535, validation_alias=_env("metrics_port"))
    models: str = Field("", validation_alias=_env("models"))
    """Path to a YAML model table; empty means the bundled ``default_models.yaml``."""
    simulator_url: str = Field("http://127.0.0.1:8090", pattern=r"^https?://\S+$")
    """The bundled provider simulator (``OPENCLAW_SIMULATOR_URL``); endpoints under it are labelled simulated."""
    openai_api_key: SecretStr = Field(
        SecretStr(""), validation_alias=AliasChoices("OPENAI_API_KEY", "OPENCLAW_ROUTER_OPENAI_API_KEY")
    )
    anthropic_api_key: SecretStr = Field(
        SecretStr(""), validation_alias=AliasChoices("ANTHROPIC_API_KEY", "OPENCLAW_ROUTER_ANTHROPIC_API_KEY")
    )
    admin_token: SecretStr | None = Field(None, validation_alias=_env("admin_token"))
    """Bearer token that AddModel, UpdateModel and RemoveModel must carry. Unset (or empty): admin calls are
    allowed only when ``listen`` is a loopback address, and refused otherwise."""
    api_key_env_pattern: str = Field(
        DEFAULT_API_KEY_ENV_PATTERN, validation_alias=_env("api_key_env_pattern")
    )
    """The environment variables a model's ``api_key_env`` may name (admin calls and the YAML table)."""
    drain_seconds: float = Field(20.0, ge=0, le=25, validation_alias=_env("drain_seconds"))
    """Grace period on SIGTERM for in-flight calls (kept below Kubernetes' 30 s)."""
    queue_timeout_seconds: float = Field(10.0, gt=0, le=600, validation_alias=_env("queue_timeout_seconds"))
    """How long a request waits for a busy model's concurrency slot before trying the next model."""
    max_queue: int = Field(1000, ge=0, le=1_000_000, validation_alias=_env("max_queue"))
    """Requests allowed to wait per model; beyond that a busy model is skipped at once."""
    breaker_fail_max: int = Field(5, ge=1, le=1000, validation_alias=_env("breaker_fail_max"))
    """Consecutive provider failures that open a model's circuit breaker."""
    breaker_reset_seconds: float = Field(30.0, gt=0, le=3600, validation_alias=_env("breaker_reset_seconds"))
    """How long an open breaker waits before letting one probe through."""
    shared_state: bool = Field(False, validation_alias=_env("shared_state"))
    """Share the model table, breakers and tenant quotas with the other replicas through ``OPENCLAW_REDIS_URL``."""
    models_watch_seconds: float = Field(2.0, ge=0, le=3600, validation_alias=_env("models_watch_seconds"))
    """How often the ``models`` file is checked for changes (0: never); a changed file is swapped in whole."""
    retry_budget_ratio: float = Field(0.2, ge=0, le=10, validation_alias=_env("retry_budget_ratio"))
    """Retries and fallbacks may add this share of extra provider calls (plus 5 a second)."""
    default_priority: Literal["interactive", "agent", "batch"] = Field(
        "interactive", validation_alias=_env("default_priority")
    )
    """The queueing class of requests that name none."""
    tenants_file: Path | None = None
    """``OPENCLAW_TENANTS_FILE``, as the gateway reads it: which models each tenant may use, and its quotas."""
    tenants_mode: Literal["open", "closed"] = "open"
    cache_ttl_seconds: float = Field(3600.0, ge=0, le=30 * 86400, validation_alias=_env("cache_ttl_seconds"))
    """How long cached answers live; 0 turns the response cache off (see docs/router.md, "Response cache")."""
    cache_models: dict[str, NonNegativeFloat] = Field(
        default_factory=dict, validation_alias=_env("cache_models")
    )
    """Per-model cache TTLs in seconds as JSON (``{"gpt-4o": 600, "echo": 0}``); 0 never caches that model."""
    coalesce: bool = Field(True, validation_alias=_env("coalesce"))
    """Whether identical cacheable requests in flight together share one provider call."""
    embed_batch_window_ms: float = Field(5.0, ge=0, le=1000, validation_alias=_env("embed_batch_window_ms"))
    """How long an Embed request waits for others to share its provider call; 0 turns batching off."""
    embed_batch_max_inputs: int = Field(256, ge=1, le=2048, validation_alias=_env("embed_batch_max_inputs"))
    """Texts in one micro-batch at most."""
    catalogue: str = Field("", validation_alias=_env("catalogue"))
    """A YAML model catalogue that extends (and overrides) the bundled ``model_catalogue.yaml``."""
    metering: bool = Field(True, validation_alias=_env("metering"))
    # An audit record per model call (services/router/audit.py) in the tenants' hash chains; needs Redis.
    audit: bool = Field(True, validation_alias=_env("audit"))
    """Whether tenants' usage is kept in Redis (per day) for GetUsage."""
    usage_retention_days: int = Field(400, ge=1, le=3660, validation_alias=_env("usage_retention_days"))

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None  # an empty variable means "not set"
        if not re.fullmatch(r"[\x21-\x7e]+", value.get_secret_value()):
            raise ValueError("must be printable ASCII without spaces (it travels in gRPC metadata)")
        return value

    @field_validator("tenants_file")
    @classmethod
    def _tenants_file_loads(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                load_file(value)
            except (OSError, InvalidInputError, ValueError) as exc:
                raise ValueError(f"cannot load {value}: {getattr(exc, 'message', exc)}") from None
        return value

    @field_validator("api_key_env_pattern")
    @classmethod
    def _api_key_env_pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if not value:
            raise ValueError("must not be empty")
        return value
