"""The compose stack as parsed YAML, shared by the compose, dashboard and Kubernetes tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.deploy._helpers import COMPOSE_FILE, OVERRIDE_FILE, load_yaml


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs: dict[str, dict[str, Any]] = compose["services"]
    return svcs


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(OVERRIDE_FILE)
    return data
