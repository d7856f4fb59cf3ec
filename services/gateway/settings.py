"""Settings of the gateway process: listeners, the router's address, authentication, governance and limits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.errors import InvalidInputError
from services.common.settings import CommonSettings
from services.common.tenants import PERMISSIONS, load_file
from services.gateway.auth import SYMMETRIC, check_algorithms

# Used only with OPENCLAW_ENV=dev, and logged loudly when it is.
DEV_JWT_SECRET = "dev-only-secret-change-me-0123456789abcdef"  # the same as openclaw.launcher's
_MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash output


class GatewaySettings(CommonSettings):
    """Read once from OPENCLAW_* variables; a missing or bad value stops start-up naming the variable."""

    model_config = SettingsConfigDict(
        env_prefix="OPENCLAW_", extra="ignore", frozen=True, validate_by_name=True
    )

    env: str = Field(default="prod", pattern=r"^(dev|test|staging|prod)$")
    http_host: str = Field(default="127.0.0.1", validation_alias="OPENCLAW_GATEWAY_HTTP_HOST")
    http_port: int = Field(default=8080, ge=0, le=65535, validation_alias="OPENCLAW_GATEWAY_HTTP_PORT")
    grpc_host: str = Field(default="127.0.0.1", validation_alias="OPENCLAW_GATEWAY_GRPC_HOST")
    grpc_port: int = Field(default=50052, ge=0, le=65535, validation_alias="OPENCLAW_GATEWAY_GRPC_PORT")
    router_addr: str = "127.0.0.1:50051"
    jwt_secret: SecretStr = SecretStr("")
    jwt_issuer: str = "openclaw"
    jwt_audience: str = "openclaw-api"
    # HS* (with jwt_secret) or public-key algorithms (with a JWKS URL or file), never both.
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    jwks_url: str = Field(default="", pattern=r"^(https?://\S+)?$")
    jwks_file: Path | None = None
    jwks_refresh_seconds: float = Field(default=300.0, ge=5, le=86_400)
    # Roles given to a verified JWT that carries no roles claim (empty: such tokens may do nothing).
    auth_default_roles: tuple[str, ...] = ("operator",)
    api_keys_enabled: bool = True
    api_key_cache_seconds: float = Field(default=30.0, ge=0, le=3600)
    # Tenants: a YAML file (services/common/tenants.py) plus the admin API; closed refuses undefined tenants.
    tenants_file: Path | None = None
    tenants_mode: Literal["open", "closed"] = "open"
    admin_token: SecretStr | None = Field(default=None, validation_alias="OPENCLAW_GATEWAY_ADMIN_TOKEN")
    # Limits: per tenant from its quotas, optionally per API key too; per-route concurrency and shedding per replica.
    rate_limit_enabled: bool = True
    api_key_requests_per_minute: int = Field(default=0, ge=0, le=10_000_000)
    api_key_burst: int = Field(default=0, ge=0, le=10_000_000)
    max_json_depth: int = Field(default=64, ge=2, le=64, validation_alias="OPENCLAW_GATEWAY_MAX_JSON_DEPTH")
    max_concurrent_submits: int = Field(
        default=256, ge=1, le=1_000_000, validation_alias="OPENCLAW_GATEWAY_MAX_CONCURRENT_SUBMITS"
    )
    max_concurrent_reads: int = Field(
        default=2048, ge=1, le=1_000_000, validation_alias="OPENCLAW_GATEWAY_MAX_CONCURRENT_READS"
    )
    max_concurrent_chats: int = Field(
        default=256, ge=1, le=1_000_000, validation_alias="OPENCLAW_GATEWAY_MAX_CONCURRENT_CHATS"
    )
    shed_queue_depth: int = Field(
        default=10_000, ge=0, le=100_000_000, validation_alias="OPENCLAW_GATEWAY_SHED_QUEUE_DEPTH"
    )
    shed_check_seconds: float = Field(
        default=1.0, ge=0, le=60, validation_alias="OPENCLAW_GATEWAY_SHED_CHECK_SECONDS"
    )
    audit_enabled: bool = True
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, validation_alias="OPENCLAW_GATEWAY_MAX_BODY_BYTES"
    )
    task_max_attempts: int = Field(default=3, ge=1, le=100)
    drain_seconds: float = Field(
        default=20.0, ge=0, le=300, validation_alias="OPENCLAW_GATEWAY_DRAIN_SECONDS"
    )
    publish_timeout_seconds: float = Field(
        default=5.0, gt=0, validation_alias="OPENCLAW_GATEWAY_PUBLISH_TIMEOUT_SECONDS"
    )

    # HTTP/2 listeners (granian): h2c with prior knowledge, and h2 over TLS 1.3; unset means off.
    http2_port: int | None = Field(
        default=None, ge=0, le=65535, validation_alias="OPENCLAW_GATEWAY_HTTP2_PORT"
    )
    tls_port: int | None = Field(default=None, ge=0, le=65535, validation_alias="OPENCLAW_GATEWAY_TLS_PORT")
    tls_cert_file: Path | None = Field(default=None, validation_alias="OPENCLAW_GATEWAY_TLS_CERT_FILE")
    tls_key_file: Path | None = Field(default=None, validation_alias="OPENCLAW_GATEWAY_TLS_KEY_FILE")
    # WebSocket /v1/ws.
    ws_max_message_bytes: int = Field(
        default=1024 * 1024, ge=1024, validation_alias="OPENCLAW_GATEWAY_WS_MAX_MESSAGE_BYTES"
    )
    ws_ping_interval_seconds: float = Field(
        default=20.0, gt=0, le=300, validation_alias="OPENCLAW_GATEWAY_WS_PING_INTERVAL_SECONDS"
    )
    ws_ping_timeout_seconds: float = Field(
        default=20.0, gt=0, le=300, validation_alias="OPENCLAW_GATEWAY_WS_PING_TIMEOUT_SECONDS"
    )
    ws_auth_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, validation_alias="OPENCLAW_GATEWAY_WS_AUTH_TIMEOUT_SECONDS"
    )
    ws_max_in_flight: int = Field(
        default=32, ge=1, le=10_000, validation_alias="OPENCLAW_GATEWAY_WS_MAX_IN_FLIGHT"
    )
    ws_max_messages_per_second: float = Field(
        default=100.0, gt=0, validation_alias="OPENCLAW_GATEWAY_WS_MAX_MESSAGES_PER_SECOND"
    )
    # How often an open connection re-checks its API key, so a revoked key stops working there too.
    ws_credential_check_seconds: float = Field(
        default=30.0, gt=0, le=3600, validation_alias="OPENCLAW_GATEWAY_WS_CREDENTIAL_CHECK_SECONDS"
    )
    # Chat channels, the agents answering on them and schedules (services/gateway/channels_config.py); empty: none.
    channels_file: Path | None = Field(default=None, validation_alias="OPENCLAW_GATEWAY_CHANNELS_FILE")
    # MQTT 5 ingress; an empty URL turns it off.
    mqtt_url: str = Field(
        default="", pattern=r"^(mqtts?://[^/\s]+)?$", validation_alias="OPENCLAW_GATEWAY_MQTT_URL"
    )
    mqtt_share_group: str = Field(
        default="openclaw-gateway",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        validation_alias="OPENCLAW_GATEWAY_MQTT_SHARE_GROUP",
    )
    mqtt_topic_prefix: str = Field(
        default="openclaw",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        validation_alias="OPENCLAW_GATEWAY_MQTT_TOPIC_PREFIX",
    )

    @model_validator(mode="after")
    def _tls_needs_files(self) -> GatewaySettings:
        if self.tls_port is not None and (self.tls_cert_file is None or self.tls_key_file is None):
            raise ValueError(
                "OPENCLAW_GATEWAY_TLS_PORT needs OPENCLAW_GATEWAY_TLS_CERT_FILE and OPENCLAW_GATEWAY_TLS_KEY_FILE"
            )
        return self

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None  # an empty variable means "not set": the platform admin API is off
        if len(value.get_secret_value()) < _MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {_MIN_SECRET_BYTES} characters")
        return value

    @field_validator("auth_default_roles")
    @classmethod
    def _known_roles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(PERMISSIONS))
        if unknown:
            raise ValueError(f"unknown role(s) {unknown}; choose from {sorted(PERMISSIONS)}")
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

    @model_validator(mode="after")
    def _key_source(self) -> GatewaySettings:
        try:
            check_algorithms(self.jwt_algorithms, has_secret=True, has_jwks=True)
        except ValueError as exc:
            raise ValueError(f"OPENCLAW_JWT_ALGORITHMS: {exc}") from None
        if self.jwks_url and self.jwks_file is not None:
            raise ValueError("set one of OPENCLAW_JWKS_URL and OPENCLAW_JWKS_FILE, not both")
        asymmetric = set(self.jwt_algorithms) - SYMMETRIC
        if asymmetric and not (self.jwks_url or self.jwks_file):
            raise ValueError(
                f"OPENCLAW_JWT_ALGORITHMS {sorted(asymmetric)} need OPENCLAW_JWKS_URL or OPENCLAW_JWKS_FILE"
            )
        return self

    @model_validator(mode="after")
    def _secret_required_outside_dev(self) -> GatewaySettings:
        if not set(self.jwt_algorithms) & SYMMETRIC:
            return self  # public-key tokens only: no shared secret is used
        secret = self.jwt_secret.get_secret_value()
        if not secret and self.env != "dev":
            raise ValueError(
                "OPENCLAW_JWT_SECRET is required (a development secret is used only with OPENCLAW_ENV=dev)"
            )
        if secret and len(secret.encode()) < _MIN_SECRET_BYTES:
            raise ValueError(f"OPENCLAW_JWT_SECRET must be at least {_MIN_SECRET_BYTES} bytes for HS256")
        return self

    @property
    def uses_dev_secret(self) -> bool:
        """True when no secret was configured and the development one stands in (OPENCLAW_ENV=dev only)."""
        return not self.jwt_secret.get_secret_value() and self.uses_shared_secret

    @property
    def uses_shared_secret(self) -> bool:
        """Whether tokens are HS*-signed (verified with jwt_secret) rather than with JWKS keys."""
        return bool(set(self.jwt_algorithms) & SYMMETRIC)

    @property
    def jwt_key(self) -> str:
        """The HS256 key tokens are verified with."""
        return self.jwt_secret.get_secret_value() or DEV_JWT_SECRET

    @property
    def service(self) -> str:
        """The service name in logs, traces and metrics."""
        return self.service_name or "openclaw-gateway"
