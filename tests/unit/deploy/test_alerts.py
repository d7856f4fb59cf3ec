"""Prometheus rules: promtool's syntax check and unit tests, metric names, test coverage and runbook links."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from tests.unit.deploy._helpers import (
    COMPOSE_DIR,
    PROMETHEUS_DIR,
    ROOT,
    exported_metrics,
    load_yaml,
    mounts,
    promql_metric_names,
    run,
    series_names,
    tool,
)

RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml"))
# The one rule file that may read RabbitMQ's exporter; the others see only OpenClaw's own metrics.
BROKER_RULES = "rabbitmq.rules.yml"
BROKER_METRICS = {
    "rabbitmq_detailed_queue_consumers",
    "rabbitmq_detailed_queue_messages",
    "rabbitmq_detailed_queue_messages_ready",
}


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in load_yaml(path)["groups"] for rule in group["rules"]]


def all_rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for rule in rules(path)]


def test_rule_files_pass_promtool_check() -> None:
    assert {p.name for p in RULE_FILES} == {"slo.rules.yml", "openclaw.rules.yml", BROKER_RULES}
    done = run(tool("promtool"), "check", "rules", *map(str, RULE_FILES))
    assert done.stdout.count("SUCCESS") == len(RULE_FILES), done.stdout


def test_rule_unit_tests_pass() -> None:
    done = run(tool("promtool"), "test", "rules", *map(str, TEST_FILES))
    assert done.stdout.count("SUCCESS") == len(TEST_FILES), done.stdout


def test_promtool_rejects_a_wrong_expectation(tmp_path: Path) -> None:
    """Negative control: a test whose expected alert is wrong must fail, or the passing run proves nothing."""
    source = PROMETHEUS_DIR / "tests" / "rabbitmq.test.yml"
    text = source.read_text().replace("../rules/", f"{PROMETHEUS_DIR / 'rules'}/")
    assert "holds 2k ready tasks" in text
    broken = tmp_path / "broken.test.yml"
    broken.write_text(text.replace("holds 2k ready tasks", "holds 3k ready tasks"))
    done = subprocess.run(
        [tool("promtool"), "test", "rules", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "OpenClawTaskQueueBacklogDeep" in done.stdout + done.stderr


def test_rule_expressions_use_declared_metrics_only() -> None:
    declared = {s for family, kind in exported_metrics().items() for s in series_names(family, kind)}
    recorded = {rule["record"] for rule in all_rules() if "record" in rule}
    assert all(":" in name for name in recorded), "recording rules are named level:metric:operations"
    for path in RULE_FILES:
        allowed = declared | recorded | {"up"} | (BROKER_METRICS if path.name == BROKER_RULES else set())
        for rule in rules(path):
            names = promql_metric_names(rule["expr"])
            assert names, f"{path.name}: no metric in {rule['expr']!r}"
            unknown = names - allowed
            assert not unknown, f"{path.name}: {rule.get('alert') or rule['record']} uses {unknown}"


def test_every_recording_rule_is_used() -> None:
    exprs = [rule["expr"] for rule in all_rules()]
    for rule in all_rules():
        if "record" in rule:
            assert any(rule["record"] in promql_metric_names(e) for e in exprs), f"{rule['record']} is unused"


def test_every_alert_is_tested_both_ways() -> None:
    """Each alert has a case where it must fire and a case where it must stay quiet."""
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        spec = load_yaml(path)
        for rule_file in spec["rule_files"]:
            assert (path.parent / rule_file).resolve() in {p.resolve() for p in RULE_FILES}, rule_file
        for case in spec["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in all_rules() if "alert" in rule}
    assert alerts - fires == set(), "alerts never shown to fire"
    assert alerts - quiet == set(), "alerts never shown to stay quiet"


def test_alerts_carry_severity_and_a_runbook_section_that_exists() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", runbook, re.M)
    }
    for rule in all_rules():
        if "alert" not in rule:
            continue
        assert rule["labels"]["severity"] in {"page", "ticket", "warning"}, rule["alert"]
        path, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert path == "docs/runbook.md" and anchor in anchors, (
            f"{rule['alert']}: no runbook section {anchor}"
        )
        assert rule["annotations"]["summary"], rule["alert"]


def test_compose_prometheus_loads_the_rules(services: dict[str, dict[str, Any]]) -> None:
    target = "/etc/prometheus/rules"
    binds = {
        (COMPOSE_DIR / source).resolve(): mounted
        for kind, source, mounted in mounts(services["prometheus"])
        if kind == "bind"
    }
    assert binds.get((PROMETHEUS_DIR / "rules").resolve()) == target
    config = load_yaml(COMPOSE_DIR / "prometheus" / "prometheus.yml")
    assert config["rule_files"] == [f"{target}/*.yml"]
    detailed = [job for job in config["scrape_configs"] if job.get("metrics_path") == "/metrics/detailed"]
    assert detailed, "the queue alerts need RabbitMQ's per-queue series"
    families = set(detailed[0]["params"]["family"])
    assert families == {"queue_coarse_metrics", "queue_consumer_count"}
