"""The LLM router: a gRPC service in front of many model providers.

Public surface: ``build(settings, **overrides) -> RouterApp`` (``await app.start()``, ``app.port``,
``await app.stop(grace)``), the settings, the registry and the routing domain.
"""

from __future__ import annotations

from services.router.bootstrap import RouterApp, build
from services.router.registry import ModelConfigError, ModelSpec, ModelTable, Registry
from services.router.routing import Router, RoutingPolicy
from services.router.settings import RouterSettings

__all__ = [
    "ModelConfigError",
    "ModelSpec",
    "ModelTable",
    "Registry",
    "Router",
    "RouterApp",
    "RouterSettings",
    "RoutingPolicy",
    "build",
]
