"""Settings of the gateway process: listeners, the router's address, JWT verification, limits."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import CommonSettings

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

    @model_validator(mode="after")
    def _secret_required_outside_dev(self) -> GatewaySettings:
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
        return not self.jwt_secret.get_secret_value()

    @property
    def jwt_key(self) -> str:
        """The HS256 key tokens are verified with."""
        return self.jwt_secret.get_secret_value() or DEV_JWT_SECRET

    @property
    def service(self) -> str:
        """The service name in logs, traces and metrics."""
        return self.service_name or "openclaw-gateway"
