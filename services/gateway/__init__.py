"""The gateway: task API over HTTP, WebSocket, MQTT and gRPC, OpenAI-compatible chat, and governance (JWT or API
key auth, roles, tenant policies, rate and stream limits, shedding, audit); tasks go to RabbitMQ, chat to the router.

Public surface: ``build`` and ``GatewayApp`` (the process), ``GatewaySettings``, ``TaskService`` (the domain
every transport calls) and ``mint_token`` (development tokens for the CLI). Names are imported on first use,
so ``openclaw token`` does not pay for the servers' imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.gateway.auth import Principal, TokenVerifier, mint_token
    from services.gateway.bootstrap import GatewayApp, build
    from services.gateway.settings import GatewaySettings
    from services.gateway.tasks import SubmitRequest, TaskService

_EXPORTS = {
    "GatewayApp": "services.gateway.bootstrap",
    "build": "services.gateway.bootstrap",
    "GatewaySettings": "services.gateway.settings",
    "Principal": "services.gateway.auth",
    "TokenVerifier": "services.gateway.auth",
    "mint_token": "services.gateway.auth",
    "SubmitRequest": "services.gateway.tasks",
    "TaskService": "services.gateway.tasks",
}
__all__ = [
    "GatewayApp",
    "GatewaySettings",
    "Principal",
    "SubmitRequest",
    "TaskService",
    "TokenVerifier",
    "build",
    "mint_token",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'services.gateway' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
