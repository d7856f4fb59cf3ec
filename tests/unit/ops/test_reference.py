"""docs/operations.md is generated from the catalogue and kept current; the CLI lists and shows operations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openclaw.cli import DOCS, main
from services.executor.ops import catalogue, reference


def test_docs_operations_md_is_current() -> None:
    """Fails when an operation or its params changed without `openclaw ops docs` being re-run."""
    assert DOCS.read_text() == reference.markdown(catalogue()), (
        "docs/operations.md is stale: run `openclaw ops docs`"
    )


def test_every_operation_has_a_section_with_its_parameters() -> None:
    text = reference.markdown(catalogue())
    for name, op in catalogue().items():
        assert f"### `{name}`" in text
        for param in op.params.model_json_schema().get("properties", {}):
            assert f"| `{param}` |" in text, (name, param)


def test_cli_lists_every_operation_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ops", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(item["name"] for item in listed) == sorted(catalogue())
    assert all(item["description"] for item in listed)


def test_cli_shows_one_operation_and_names_an_unknown_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ops", "show", "json_transform"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "json_transform" and "expression" in shown["params"]["properties"]
    assert main(["ops", "show", "no_such_op"]) == 2
    assert "no operation named 'no_such_op'" in capsys.readouterr().err


def test_cli_docs_check_detects_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "operations.md"
    stale.write_text("old")
    assert main(["ops", "docs", "--output", str(stale), "--check"]) == 1
    assert main(["ops", "docs", "--output", str(stale)]) == 0
    assert main(["ops", "docs", "--output", str(stale), "--check"]) == 0
