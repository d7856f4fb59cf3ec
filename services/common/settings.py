"""Settings every process shares; each service extends this with its own fields."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.encryption import MasterKeys

# Public on purpose: only for development. Without OPENCLAW_AUDIT_KEY anyone with Redis access could forge records.
DEV_AUDIT_KEY = "openclaw-development-audit-key-not-for-production"


class CommonSettings(BaseSettings):
    """Read once at start-up from OPENCLAW_* environment variables; a bad value stops start-up."""

    # hide_input_in_errors: a bad value of a secret (a master key, say) must not be echoed into logs.
    model_config = SettingsConfigDict(
        env_prefix="OPENCLAW_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

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
    # Encryption at rest of task data: master keys as JSON {id: base64 of 32 bytes} and the id that wraps new
    # data keys. Off when unset: there is no development default, a public key would only pretend to protect.
    master_keys: SecretStr = SecretStr("")
    master_key_id: str = ""
    # Mutual TLS between the services (docs/security.md): PEM files of this service's certificate and key and of
    # the CA every service's certificate chains to; all three or none. tls_required refuses to start without them
    # (production), so a missing variable cannot silently fall back to plaintext.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_required: bool = False

    def audit_key_bytes(self) -> bytes:
        """The audit chains' HMAC key (the development key when none is configured)."""
        return (self.audit_key.get_secret_value() or DEV_AUDIT_KEY).encode()

    def master_key_set(self) -> MasterKeys | None:
        """The configured master keys, or None when encryption at rest is off."""
        raw = self.master_keys.get_secret_value()
        if not raw:
            return None
        return MasterKeys(json.loads(raw), self.master_key_id)

    @model_validator(mode="after")
    def _tls_files_complete(self) -> CommonSettings:
        files = {
            "OPENCLAW_TLS_CERT": self.tls_cert,
            "OPENCLAW_TLS_KEY": self.tls_key,
            "OPENCLAW_TLS_CA": self.tls_ca,
        }
        missing = [name for name, path in files.items() if path is None]
        if missing and (self.tls_required or len(missing) < len(files)):
            why = "OPENCLAW_TLS_REQUIRED is set" if self.tls_required else "mutual TLS needs all three files"
            raise ValueError(f"{', '.join(missing)}: required ({why})")
        return self

    @model_validator(mode="after")
    def _master_keys_valid(self) -> CommonSettings:
        raw = self.master_keys.get_secret_value()
        if not raw:
            if self.master_key_id:
                raise ValueError("OPENCLAW_MASTER_KEY_ID is set but OPENCLAW_MASTER_KEYS is not")
            return self
        try:
            keys = json.loads(raw)
        except ValueError:
            raise ValueError("OPENCLAW_MASTER_KEYS: not JSON (expected {id: base64 of 32 bytes})") from None
        if not isinstance(keys, dict) or not keys or not all(isinstance(v, str) for v in keys.values()):
            raise ValueError("OPENCLAW_MASTER_KEYS: expected a JSON object {id: base64 of 32 bytes}")
        if not self.master_key_id:
            raise ValueError(
                "OPENCLAW_MASTER_KEY_ID: required with OPENCLAW_MASTER_KEYS (the key for new data)"
            )
        try:
            MasterKeys(keys, self.master_key_id)
        except ValueError as exc:
            raise ValueError(f"OPENCLAW_MASTER_KEYS: {exc}") from None
        return self
