"""What the OpenAI-compatible chat and embeddings routes share: their request error and the route info."""

from __future__ import annotations

from typing import Any

from openclaw.v1 import router_pb2


class OpenAIError(Exception):
    """An error to answer in OpenAI's shape (for request problems this module finds itself)."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def route_info(route: router_pb2.RouteInfo) -> dict[str, Any]:
    """RouteInfo as JSON: which model and provider served, queueing time, every attempt."""
    return {
        "model": route.model,
        "provider": route.provider,
        "queue_ms": route.queue_ms,
        "simulated": route.simulated,
        "attempts": [
            {
                "model": a.model,
                "provider": a.provider,
                "outcome": a.outcome,
                "error": a.error,
                "duration_ms": a.duration_ms,
            }
            for a in route.attempts
        ],
    }
