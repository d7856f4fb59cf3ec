"""Settings of the provider simulator process."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SimulatorSettings(BaseSettings):
    """Where the simulator listens and which behaviour file it loads at start-up."""

    model_config = SettingsConfigDict(env_prefix="OPENCLAW_SIMULATOR_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    config: Path | None = None
    """Optional YAML file of per-model behaviours: ``models: {name: {latency_ms: ...}}``."""
    seed: int = 0
    """Seed of the per-model random generators behind ``error_rate``."""

    @field_validator("config")
    @classmethod
    def _config_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"behaviour file {str(value)!r} does not exist")
        return value
