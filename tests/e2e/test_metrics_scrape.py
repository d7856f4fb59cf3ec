"""Every running service's /metrics parses as Prometheus text and carries the metrics it is declared to export."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from openclaw.launcher import LocalStack

pytestmark = pytest.mark.e2e
DECLARED = [
    line.split()[0]
    for line in (Path(__file__).resolve().parents[2] / "deploy" / "metrics.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
OWNERS = {"gateway": "openclaw_gateway_", "router": "openclaw_router_", "executor-0": "openclaw_executor_"}


@pytest.mark.parametrize("service", sorted(OWNERS))
async def test_each_service_exports_its_declared_metrics(stack: LocalStack, service: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(stack.metrics_urls[service]) as response:
        assert response.status == 200
        text = await response.text()
    families = {f.name for f in text_string_to_metric_families(text)}  # raises on anything malformed
    # The parser drops the _total suffix of counters from family names.
    exported = families | {f"{name}_total" for name in families}
    wanted = [m for m in DECLARED if m.startswith(OWNERS[service])]
    missing = [m for m in wanted if m not in exported]
    assert wanted and not missing, f"{service} does not export {missing}"
    assert "process_cpu_seconds_total" in exported  # process resources, for the dashboards
