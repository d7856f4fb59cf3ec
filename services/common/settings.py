"""Settings every process shares; each service extends this with its own fields."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Public on purpose: only for development. Without OPENCLAW_AUDIT_KEY anyone with Redis access could forge records.
DEV_AUDIT_KEY = "openclaw-development-audit-key-not-for-production"


class CommonSettings(BaseSettings):
    """Read once at start-up from OPENCLAW_* environment variables; a bad value stops start-up."""

    model_config = SettingsConfigDict(env_prefix="OPENCLAW_", extra="ignore", frozen=True)

    namespace: str = Field(default="openclaw", pattern=r"^[a-z][a-z0-9_.-]{0,40}$")
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    redis_url: str = "redis://127.0.0.1:6379/0"
    otlp_endpoint: str = ""
    log_level: str = Field(default="info", pattern=r"^(?i)(debug|info|warning|error)$")
    service_name: str = ""
    # Operation plugins to load (entry-point group openclaw.operations), each with the tenants it is enabled for
    # ("*" for all), as JSON: OPENCLAW_PLUGINS='{"acme": ["tenant-a"]}'. Gateway and executor must agree.
    plugins: dict[str, list[str]] = Field(default_factory=dict)
    # HMAC key of the audit chains (at least 32 bytes); shared by every service that writes or verifies them.
    audit_key: SecretStr = SecretStr("")

    def audit_key_bytes(self) -> bytes:
        """The audit chains' HMAC key (the development key when none is configured)."""
        return (self.audit_key.get_secret_value() or DEV_AUDIT_KEY).encode()
