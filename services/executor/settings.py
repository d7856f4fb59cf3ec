"""Settings of the executor process: the shared OPENCLAW_* names plus OPENCLAW_EXECUTOR_* ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import CommonSettings

SERVICE_NAME = "openclaw-executor"


def _env(name: str, *also: str) -> str | AliasChoices:
    """The environment name of an executor-only field (OPENCLAW_EXECUTOR_<NAME>), plus accepted synonyms."""
    primary = f"OPENCLAW_EXECUTOR_{name.upper()}"
    return AliasChoices(primary, *also) if also else primary


_SCOPE_KEYS = ("tenants", "hosts", "buckets", "prefixes", "exchanges", "topics")


def _scope_list(name: str, key: str, raw: Any) -> str:
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) and "," not in i for i in items):
        raise ValueError(f"credential set {name!r}: {key} must be a list of names (without commas)")
    cleaned = [i.strip().lower().rstrip(".") if key == "hosts" else i.strip() for i in items]
    if not cleaned or not all(cleaned):
        raise ValueError(f"credential set {name!r}: {key} must name at least one; omit it to allow any")
    return ",".join(cleaned)


class ExecutorSettings(CommonSettings):
    """Read once at start-up; a missing or bad value stops the process with a message naming it.

    Fields may also be passed by name (``ExecutorSettings(prefetch=4)``), which is how tests build them.
    """

    model_config = SettingsConfigDict(
        env_prefix="OPENCLAW_", extra="ignore", frozen=True, validate_by_name=True, validate_by_alias=True
    )

    router_addr: str = "127.0.0.1:50051"
    """host:port of the router's gRPC service (OPENCLAW_ROUTER_ADDR, shared with the gateway)."""

    prefetch: int = Field(default=64, ge=1, le=1000, validation_alias=_env("prefetch"))
    """Deliveries a worker holds unacknowledged at once, i.e. tasks run concurrently per process."""
    metrics_host: str = Field(default="127.0.0.1", validation_alias=_env("metrics_host"))
    metrics_port: int = Field(default=9103, ge=0, le=65535, validation_alias=_env("metrics_port"))
    storage_root: Path = Field(
        default=Path("./var/storage"), validation_alias=_env("storage_root", "OPENCLAW_STORAGE_ROOT")
    )
    """Each tenant's files live in storage_root/<tenant>/; file operations cannot leave it."""
    max_attempts: int = Field(default=3, ge=1, le=20, validation_alias=_env("max_attempts"))
    """Attempts of a task when its envelope does not say (retryable failures only)."""
    retry_delays_ms: tuple[int, ...] = Field(
        default=(1000, 5000, 30000), validation_alias=_env("retry_delays_ms")
    )
    """Back-off before attempt 2, 3, ... (the last value repeats); one delay queue per value."""
    lease_seconds: float = Field(default=30.0, ge=0.3, le=3600, validation_alias=_env("lease_seconds"))
    """How long a claimed task stays this worker's without renewal (renewed every third of it while it
    runs); a redelivered copy of a task under a live lease is put back for later instead of run again."""
    drain_seconds: float = Field(default=20.0, ge=0, le=25, validation_alias=_env("drain_seconds"))
    """On SIGTERM, how long in-flight tasks may run before they are handed back (below Kubernetes' 30 s)."""
    allow_private_network: bool = Field(default=False, validation_alias=_env("allow_private_network"))
    """Let HTTP operations reach loopback, private and link-local addresses (off: SSRF protection)."""
    credentials: dict[str, dict[str, str]] = Field(
        default_factory=dict, validation_alias=_env("credentials"), repr=False
    )
    """Named credential sets that steps refer to with ``auth``, as JSON:
    ``{"aws_credentials": {"aws_access_key_id": ..., "aws_secret_access_key": ..., "endpoint_url": ...,
    "region_name": ..., "buckets": ["reports"]}, "api": {"bearer_token": ..., "tenants": ["acme"],
    "hosts": ["api.example.com"]}}``. ``tenants``, ``hosts``, ``buckets`` and ``prefixes`` (of S3 object keys)
    limit who may use a set and where it may be sent (omitted: no limit); they are kept as comma-separated
    strings. Messaging sets: ``exchanges`` (RabbitMQ exchanges amqp_publish may use; required, ``name.*``
    matches a prefix), ``url``/``username``/``password``/``topics`` (MQTT broker and the topic filters
    mqtt_publish may use), ``signing_secret`` (webhooks); SQL sets: ``dsn`` (PostgreSQL)."""
    http_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, validation_alias=_env("http_max_bytes"))
    """Largest HTTP response or download an operation accepts."""
    http_timeout_s: float = Field(default=30.0, gt=0, le=600, validation_alias=_env("http_timeout_s"))
    """Default total timeout of one HTTP request made by an operation."""
    router_timeout_s: float = Field(default=120.0, gt=0, le=1800, validation_alias=_env("router_timeout_s"))
    max_output_bytes: int = Field(default=1024 * 1024, ge=1024, validation_alias=_env("max_output_bytes"))
    """Largest JSON output a step may checkpoint (outputs live in Redis)."""
    s3_max_threads: int = Field(default=8, ge=1, le=256, validation_alias=_env("s3_max_threads"))
    """Threads for S3 transfers (boto3 blocks), apart from the pool DNS lookups and file operations use."""
    tenants_file: Path | None = None
    """The tenants YAML the gateway reads (OPENCLAW_TENANTS_FILE): policies are checked again at run time."""
    tenants_mode: Literal["open", "closed"] = "open"
    """OPENCLAW_TENANTS_MODE, as for the gateway: closed refuses tasks of tenants that are not defined."""
    audit_enabled: bool = True
    """OPENCLAW_AUDIT_ENABLED: every operation run and agent tool call appends to the tenant's audit chain."""

    @field_validator("retry_delays_ms")
    @classmethod
    def _delays(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(d < 1 for d in value):
            raise ValueError("needs at least one delay, each at least 1 ms")
        return value

    @field_validator("credentials", mode="before")
    @classmethod
    def _credential_scopes(cls, value: Any) -> Any:
        """Scope lists (tenants, hosts, buckets) become comma-separated strings; secrets are never echoed."""
        if not isinstance(value, dict):
            return value
        out: dict[Any, Any] = {}
        for name, cred in value.items():
            if not isinstance(cred, dict):
                out[name] = cred
                continue
            cred = dict(cred)
            for key in _SCOPE_KEYS:
                if key in cred:
                    cred[key] = _scope_list(name, key, cred[key])
            out[name] = cred
        return out

    @field_validator("credentials")
    @classmethod
    def _credential_names(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for name in value:
            if not name or len(name) > 64:
                raise ValueError(f"credential set name {name!r} must be 1-64 characters")
        return value

    @property
    def service(self) -> str:
        """The name in logs and traces."""
        return self.service_name or SERVICE_NAME
