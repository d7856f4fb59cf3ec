"""The catalogue as a whole: every operation is described, typed, and run by at least one test."""

from __future__ import annotations

import re
from pathlib import Path

from services.executor.ops import catalogue

TESTS = Path(__file__).resolve().parents[2]
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def test_every_operation_has_a_name_description_and_schema() -> None:
    for name, op in catalogue().items():
        assert NAME.match(name), name
        assert op.description, f"{name} has no description (its docstring)"
        schema = op.params.model_json_schema()
        assert schema.get("type") == "object", name
        assert schema.get("additionalProperties") is False, f"{name}: params must forbid unknown fields"


def test_every_operation_is_run_by_a_test() -> None:
    """A static check: each operation's name appears quoted in a call of run_op/run in the tests."""
    sources = "\n".join(p.read_text() for p in TESTS.rglob("test_*.py"))
    called = set(re.findall(r"""\brun(?:_op)?\(\s*["']([a-z0-9_]+)["']""", sources))
    missing = sorted(set(catalogue()) - called)
    assert not missing, f"operations no test runs: {missing}"
