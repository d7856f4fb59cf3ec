"""The one way services open Redis: text replies, bounded timeouts, health checks."""

from __future__ import annotations

from redis.asyncio import Redis


def open_redis(url: str) -> Redis:
    """A pooled client; decode_responses is required by TaskStore and friends."""
    client: Redis = Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=5.0,
        socket_connect_timeout=3.0,
        health_check_interval=15,
        retry_on_timeout=True,
    )
    return client
