"""Metering without Redis: bounded Prometheus labels, cost counters, the date range of a usage query."""

from __future__ import annotations

import datetime as dt

import pytest
from prometheus_client import REGISTRY

from services.common.errors import InvalidInputError
from services.router.metering import Meter, day_range


def cost(model: str, deployment: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "openclaw_router_cost_usd_total", {"model": model, "deployment": deployment}
        )
        or 0.0
    )


async def test_cost_is_counted_per_model_and_deployment_never_per_tenant() -> None:
    meter = Meter(None, "unit")
    before = cost("unit-model", "eu")
    meter.record("tenant-a", "unit-model", "eu", 100, 50, 0.25)
    meter.record("tenant-b", "unit-model", "eu", 10, 5, 0.5)
    assert cost("unit-model", "eu") == pytest.approx(before + 0.75)
    for family in REGISTRY.collect():
        if family.name == "openclaw_router_cost_usd":
            assert all(set(sample.labels) <= {"model", "deployment"} for sample in family.samples)


async def test_usage_needs_a_tenant_and_redis() -> None:
    meter = Meter(None, "unit")
    with pytest.raises(InvalidInputError) as caught:
        await meter.usage("")
    assert caught.value.details["field"] == "tenant"


TODAY = dt.date(2026, 3, 10)


def test_day_range_defaults_to_today() -> None:
    assert day_range("", "", TODAY) == [TODAY]
    assert day_range("2026-03-08", "", TODAY) == [dt.date(2026, 3, 8), dt.date(2026, 3, 9), TODAY]
    assert day_range("", "2026-01-01", TODAY) == [dt.date(2026, 1, 1)]


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        ("yesterday", "", "from_day"),
        ("", "2026-13-01", "to_day"),
        ("2026-03-11", "2026-03-10", "from_day"),
        ("2024-01-01", "2026-03-10", "from_day"),
    ],
)
def test_day_range_refuses_bad_ranges_naming_the_field(start: str, end: str, field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        day_range(start, end, TODAY)
    assert caught.value.details["field"] == field


async def test_tenant_series_only_with_a_bounded_label() -> None:
    def tokens(tenant: str, kind: str) -> float:
        return (
            REGISTRY.get_sample_value("openclaw_router_tenant_tokens_total", {"tenant": tenant, "kind": kind})
            or 0.0
        )

    def spend(tenant: str) -> float:
        return REGISTRY.get_sample_value("openclaw_router_tenant_cost_usd_total", {"tenant": tenant}) or 0.0

    before = (tokens("acme", "prompt"), tokens("other", "completion"), spend("acme"))
    labelled = Meter(None, "ns", tenant_label=lambda t: t if t == "acme" else "other")
    labelled.record("acme", "m", "d", 10, 5, 0.25)
    labelled.record("stranger-1", "m", "d", 1, 7, 0.0)
    assert tokens("acme", "prompt") - before[0] == 10 and spend("acme") - before[2] == 0.25
    assert tokens("other", "completion") - before[1] == 7 and tokens("stranger-1", "completion") == 0.0
    Meter(None, "ns").record("acme", "m", "d", 100, 100, 1.0)  # no directory: no per-tenant series at all
    assert tokens("acme", "prompt") - before[0] == 10
