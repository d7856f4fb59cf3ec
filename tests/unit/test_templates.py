"""The template library: every template parses, its parameter schema fits its workflow and examples, it is
documented and run end to end; inputs are checked with errors naming the input; the CLI lists and shows them."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from openclaw import cli
from services.common.errors import InvalidInputError, NotFoundError
from services.executor.dsl import parse_workflow
from services.executor.ops import catalogue
from services.executor.templates import get_template, list_templates, load_template, validate_inputs

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "docs" / "templates.md").read_text(encoding="utf-8")
E2E = (ROOT / "tests" / "e2e" / "test_templates.py").read_text(encoding="utf-8")
NAMES = list_templates()


def test_the_library_has_at_least_twenty_templates() -> None:
    assert len(NAMES) >= 20


@pytest.mark.parametrize("name", NAMES)
def test_template_parses_and_its_examples_fit(name: str) -> None:
    template = get_template(name)
    assert template.workflow["name"] == name and len(template.description) >= 20
    Draft202012Validator.check_schema(template.parameters)
    assert template.parameters.get("additionalProperties") is False  # a misspelt input is an error
    workflow = parse_workflow(load_template(name), known_ops=catalogue())
    properties = template.parameters["properties"]
    assert set(workflow.inputs) == set(properties)
    for prop_name, prop in properties.items():
        assert prop.get("description"), f"{name}: parameter {prop_name} has no description"
        if "default" in prop:  # a default must itself be a valid value
            Draft202012Validator(prop).validate(prop["default"])
    assert template.examples, f"{name} has no example inputs"
    for example in template.examples:
        template.validate(example)
        workflow.bind_inputs(example)


@pytest.mark.parametrize("name", NAMES)
def test_template_is_documented_with_its_parameters(name: str) -> None:
    section = re.search(rf"^### `{re.escape(name)}`\n(.*?)(?=^### |\Z)", DOCS, re.M | re.S)
    assert section, f"docs/templates.md has no '### `{name}`' section"
    for prop_name in get_template(name).parameters["properties"]:
        assert f"`{prop_name}`" in section.group(1), (
            f"docs/templates.md: {name} does not document {prop_name}"
        )


@pytest.mark.parametrize("name", NAMES)
def test_template_is_run_end_to_end(name: str) -> None:
    assert re.search(rf'"{re.escape(name)}"', E2E), f"tests/e2e/test_templates.py never runs {name}"


def test_load_template_gives_a_fresh_copy_without_the_template_fields() -> None:
    doc = load_template("summarise-url")
    assert "parameters" not in doc and "examples" not in doc
    assert doc["inputs"]["url"] == {"description": "The http(s) URL to fetch.", "required": True}
    assert doc["inputs"]["sentences"]["default"] == 3
    doc["steps"].clear()
    assert load_template("summarise-url")["steps"]


@pytest.mark.parametrize("name", ["no-such-template", "../etc/passwd", "", "UPPER"])
def test_unknown_templates_are_not_found_naming_the_known_ones(name: str) -> None:
    with pytest.raises(NotFoundError, match=r"known: .*summarise-url"):
        get_template(name)


def _problems(name: str, inputs: Any) -> list[str]:
    with pytest.raises(InvalidInputError) as info:
        validate_inputs(name, inputs)
    errors: list[str] = info.value.details["errors"]
    assert info.value.details["field"] == errors[0].split(":")[0]
    return errors


def test_inputs_are_checked_naming_each_input() -> None:
    assert _problems("translate-file", {}) == ["inputs.path: required", "inputs.target_language: required"]
    assert _problems("summarise-url", {"url": "https://a", "colour": "red", "size": 1}) == [
        "inputs.colour: unknown input; this template takes: model, sentences, url",
        "inputs.size: unknown input; this template takes: model, sentences, url",
    ]
    assert _problems("summarise-url", {"url": "ftp://a", "sentences": "3"}) == [
        "inputs.sentences: '3' is not of type 'integer'",
        "inputs.url: 'ftp://a' does not match '^https?://'",
    ]
    assert _problems("daily-digest", {"urls": ["https://a", 7]}) == [
        "inputs.urls[1]: 7 is not of type 'string'"
    ]
    assert _problems("webhook-alert", {"event": {"severity": "loud"}}) == [
        "inputs.event.title: required",
        "inputs.event.severity: 'loud' is not one of ['critical', 'error', 'warning', 'info']",
    ]


def test_either_or_inputs_name_the_choice() -> None:
    assert _problems("summarise-document", {}) == ["inputs: give path or url"]
    assert _problems("summarise-document", {"path": "a", "url": "https://b"}) == [
        "inputs: give only one of path or url, not path and url"
    ]


def test_a_message_about_a_huge_value_is_cut() -> None:
    (problem,) = _problems("summarise-url", {"url": "https://a", "model": "m" * 5000})
    assert problem.startswith("inputs.model: ") and problem.endswith("...") and len(problem) < 400


@pytest.mark.parametrize("inputs", [[], "text", 3])
def test_inputs_must_be_an_object(inputs: Any) -> None:
    with pytest.raises(InvalidInputError, match="inputs must be a JSON object"):
        validate_inputs("summarise-url", inputs)


def test_the_message_lists_every_problem() -> None:
    with pytest.raises(InvalidInputError) as info:
        validate_inputs("translate-file", {"glossary": []})
    assert info.value.message.splitlines() == [
        "template 'translate-file': 3 problems in inputs",
        "inputs.path: required",
        "inputs.target_language: required",
        "inputs.glossary: [] is not of type 'object'",
    ]


# --- the CLI ----------------------------------------------------------------------------------------------


def test_cli_lists_every_template(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["templates", "list"]) == 0
    out = capsys.readouterr()
    assert [line.split()[0] for line in out.out.splitlines()] == NAMES
    assert f"{len(NAMES)} templates" in out.err
    assert cli.main(["templates", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in listed] == NAMES and all(t["description"] for t in listed)


def test_cli_shows_a_template(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["templates", "show", "archive-folder"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["parameters"]["required"] == ["folder", "archive"]
    assert shown["steps"][0] == "size (file_tree_size)" and "sha256" in shown["outputs"]
    assert shown["examples"] == list(get_template("archive-folder").examples)
    assert cli.main(["templates", "show", "nope"]) == 2
    assert "no template named 'nope'" in capsys.readouterr().err


def test_cli_tasks_need_a_token(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENCLAW_TOKEN", raising=False)
    assert cli.main(["tasks", "get", "abc"]) == 2
    assert "OPENCLAW_TOKEN" in capsys.readouterr().err


def test_cli_inputs_are_json_or_text(tmp_path: Path) -> None:
    file = tmp_path / "inputs.json"
    file.write_text('{"url": "https://a", "sentences": 2}')
    parser_args = argparse.Namespace(
        inputs=str(file), input=["sentences=5", "model=gpt-4-mini", "tags=[1, 2]", "note=a=b"]
    )
    assert cli._inputs(parser_args) == {
        "url": "https://a",
        "sentences": 5,
        "model": "gpt-4-mini",
        "tags": [1, 2],
        "note": "a=b",
    }
    with pytest.raises(ValueError, match="expected name=value"):
        cli._inputs(argparse.Namespace(inputs=None, input=["novalue"]))
    file.write_text("[1]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        cli._inputs(argparse.Namespace(inputs=str(file), input=None))
