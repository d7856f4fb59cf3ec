"""Tenants changed through the admin API reach every replica; a bad policy changes nothing."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from services.common.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from services.common.tenants import TenantDirectory, parse_policy

pytestmark = pytest.mark.integration


async def test_admin_changes_reach_other_replicas_and_bad_ones_change_nothing(
    redis: Redis, namespace: str
) -> None:
    configured = {"acme": parse_policy("acme", {"models": ["gpt-4-mini"]})}
    one = TenantDirectory(redis, namespace, configured=configured, closed=True)
    two = TenantDirectory(redis, namespace, configured=configured, closed=True)
    await one.start()
    await two.start()
    try:
        await one.put("globex", {"models": ["llama-3"], "quotas": {"requests_per_minute": 10}})
        await one.put("acme", {"models": ["*"]})  # the admin API overrides the config file
        with pytest.raises(InvalidInputError, match=r"quotas\.requests_per_minute"):
            await one.put("globex", {"quotas": {"requests_per_minute": 0}})
        await two.refresh()  # what the background refresh does every few seconds
        assert (
            two.policy("globex").models == ("llama-3",)
            and two.policy("globex").quotas.requests_per_minute == 10
        )
        assert two.policy("acme").allows_model("claude-3")
        assert two.known() == ["acme", "globex"]
        await one.delete("acme")
        await two.refresh()
        assert two.policy("acme").models == ("gpt-4-mini",)  # back to the config file's
        await one.delete("globex")
        await two.refresh()
        with pytest.raises(PermissionDeniedError, match="not registered"):
            two.policy("globex")
        with pytest.raises(NotFoundError):
            await one.delete("globex")
    finally:
        await one.stop()
        await two.stop()
