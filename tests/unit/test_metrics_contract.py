"""Every metric the dashboards rely on (deploy/metrics.txt) is really exported by the code, with that type."""

from __future__ import annotations

import importlib
from pathlib import Path

from prometheus_client import REGISTRY

METRICS_FILE = Path(__file__).resolve().parents[2] / "deploy" / "metrics.txt"
MODULES = [
    "services.common.hop",
    "services.common.breaker",
    "services.gateway.metrics",
    "services.gateway.channels_api",
    "services.executor.metrics",
    "services.router.metrics",
    "services.router.cache",
    "services.router.batcher",
    "services.router.metering",
]


def _declared() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in METRICS_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, kind = line.split()[:2]
            out[name] = kind
    return out


def test_every_declared_metric_is_exported_with_its_type() -> None:
    for module in MODULES:
        importlib.import_module(module)
    exported: dict[str, str] = {}
    for family in REGISTRY.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        exported[name] = family.type
    declared = _declared()
    assert declared, "deploy/metrics.txt lists no metrics"
    missing = {name for name in declared if name not in exported}
    assert not missing, f"declared in deploy/metrics.txt but exported by no code: {sorted(missing)}"
    wrong = {name: (kind, exported[name]) for name, kind in declared.items() if exported[name] != kind}
    assert not wrong, f"declared type differs from the exported one: {wrong}"


def test_openclaw_metrics_follow_prometheus_naming() -> None:
    for module in MODULES:
        importlib.import_module(module)
    for family in REGISTRY.collect():
        if not family.name.startswith("openclaw_"):
            continue
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_bytes", "_tokens")), family.name
        for sample in family.samples:
            assert not {"task_id", "prompt", "tenant_id"} & set(sample.labels), (family.name, sample.labels)
