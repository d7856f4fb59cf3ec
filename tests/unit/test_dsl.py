"""The workflow DSL: the article's form, ids, references and every validation error named by its path."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.errors import InvalidInputError, NotFoundError
from services.executor.dsl import parse_workflow
from services.executor.ops import catalogue
from services.executor.templates import list_templates, load_template

ARTICLE: dict[str, Any] = {
    "name": "数据分析",
    "steps": [
        {"type": "file_download", "params": {"url": "s3://bucket/data.csv", "auth": "aws_credentials"}},
        {"type": "llm_call", "params": {"model": "claude-3", "prompt": "分析数据并生成报告摘要"}},
    ],
}


def problems(doc: Any) -> dict[str, str]:
    with pytest.raises(InvalidInputError) as err:
        parse_workflow(doc, known_ops=catalogue())
    return {e["path"]: e["message"] for e in err.value.details["errors"]}


def test_the_articles_workflow_parses_unchanged() -> None:
    wf = parse_workflow(ARTICLE, known_ops=catalogue())
    assert wf.name == "数据分析"
    assert [(s.id, s.type) for s in wf.steps] == [("step1", "file_download"), ("step2", "llm_call")]
    assert wf.steps[0].params == {"url": "s3://bucket/data.csv", "auth": "aws_credentials"}
    assert wf.outputs is None


def test_json_text_and_plain_names_are_accepted() -> None:
    import json

    wf = parse_workflow(json.dumps(ARTICLE), known_ops=["file_download", "llm_call"])
    assert len(wf.steps) == 2


def test_unknown_step_type_is_named_with_its_path() -> None:
    doc = {"name": "x", "steps": [{"type": "file_read", "params": {"path": "a"}}, {"type": "fly"}]}
    with pytest.raises(InvalidInputError) as err:
        parse_workflow(doc, known_ops=catalogue())
    assert err.value.message.startswith("steps[1].type: unknown step type 'fly'; known: file_download, ")
    assert err.value.http_status == 400


def test_params_are_checked_against_the_operation() -> None:
    found = problems(
        {
            "steps": [
                {"type": "http_request", "params": {"method": "BREW", "url": "ftp://x", "tmeout_s": 3}},
                {"type": "llm_call", "params": {"model": "m", "temperature": 9}},
                {"type": "json_transform", "params": {"expression": "a[?"}},
                {"type": "file_read"},
            ]
        }
    )
    assert found["steps[0].params.method"].startswith("Input should be")
    assert found["steps[0].params.url"] == "must be an http:// or https:// URL"
    assert found["steps[0].params.tmeout_s"] == "unknown parameter"
    assert found["steps[1].params.prompt"] == "required"
    assert "less than or equal to 2" in found["steps[1].params.temperature"]
    assert found["steps[2].params.expression"].startswith("not a valid JMESPath expression")
    assert found["steps[3].params.path"] == "required"


def test_values_with_expressions_are_typed_at_run_time() -> None:
    doc = {
        "steps": [
            {"type": "http_request", "params": {"url": "${{ inputs.url }}", "timeout_s": "${{ inputs.t }}"}},
            {"type": "llm_call", "params": {"model": "m", "prompt": "x", "max_tokens": "${{ inputs.n }}"}},
        ]
    }
    assert len(parse_workflow(doc, known_ops=catalogue()).steps) == 2


def test_step_ids_default_by_position_and_must_be_unique() -> None:
    doc = {
        "steps": [
            {"id": "fetch", "type": "file_read", "params": {"path": "a"}},
            {"type": "file_read", "params": {"path": "b"}},
            {"id": "fetch", "type": "file_read", "params": {"path": "c"}},
            {"id": "9bad", "type": "file_read", "params": {"path": "d"}},
        ]
    }
    found = problems(doc)
    assert found == {
        "steps[2].id": "duplicate step id 'fetch' (also steps[0])",
        "steps[3].id": "step ids are 1-64 letters, digits and '_', starting with a letter",
    }
    ok = parse_workflow({"steps": doc["steps"][:2]}, known_ops=catalogue())
    assert [s.id for s in ok.steps] == ["fetch", "step2"]


def test_references_must_name_earlier_steps() -> None:
    found = problems(
        {
            "steps": [
                {"type": "llm_call", "params": {"model": "m", "prompt": "${{ prev.output }}"}},
                {"type": "llm_call", "params": {"model": "m", "prompt": "${{ steps.step3.output.content }}"}},
                {"type": "llm_call", "params": {"model": "m", "prompt": "${{ steps.nope.output }}"}},
                {"type": "llm_call", "params": {"model": "m", "prompt": "${{ steps.step1.__class__ }}"}},
                {"type": "llm_call", "params": {"model": "m", "prompt": "${{ env.HOME }}"}},
            ]
        }
    )
    assert found["steps[0].params.prompt"] == "${{ prev.output }}: the first step has no previous step"
    assert found["steps[1].params.prompt"] == (
        "${{ steps.step3.output.content }}: step 'step3' runs later; a step can only use earlier steps' outputs"
    )
    assert (
        found["steps[2].params.prompt"]
        == "${{ steps.nope.output }}: unknown step 'nope'; earlier steps: step1, step2"
    )
    assert "'__' are not allowed" in found["steps[3].params.prompt"]
    assert "unknown name 'env'" in found["steps[4].params.prompt"]


def test_declared_inputs_and_outputs() -> None:
    doc: dict[str, Any] = {
        "name": "w",
        "inputs": {"city": {"required": True}, "days": {"default": 3}},
        "steps": [
            {
                "id": "ask",
                "type": "llm_call",
                "params": {"model": "m", "prompt": "${{ inputs.city }} ${{ inputs.dayz }}"},
            }
        ],
        "outputs": {"answer": "${{ steps.ask.output.content }}", "bad": "${{ steps.later.output }}"},
    }
    found = problems(doc)
    assert found["steps[0].params.prompt"] == "${{ inputs.dayz }}: unknown input 'dayz'; declared: city, days"
    assert found["outputs.bad"].startswith("${{ steps.later.output }}: unknown step 'later'")
    doc["steps"][0]["params"]["prompt"] = "${{ inputs.city }}"
    del doc["outputs"]["bad"]
    wf = parse_workflow(doc, known_ops=catalogue())
    assert wf.bind_inputs({"city": "Oslo"}) == {"city": "Oslo", "days": 3}
    with pytest.raises(InvalidInputError, match=r"inputs.city: required"):
        wf.bind_inputs({})


@pytest.mark.parametrize(
    ("doc", "path", "message"),
    [
        ([], "", "a workflow must be a JSON object, not a list"),
        ({"name": "x"}, "steps", "required"),
        ({"steps": []}, "steps", "must be a non-empty list of steps"),
        ({"steps": "x"}, "steps", "must be a non-empty list of steps"),
        ({"steps": [3]}, "steps[0]", "a step must be an object with type and params, not a int"),
        ({"steps": [{"params": {}}]}, "steps[0].type", "required: the operation to run, e.g. 'http_request'"),
        (
            {"steps": [{"type": "file_read", "params": [1]}]},
            "steps[0].params",
            "must be an object, not a list",
        ),
        (
            {"steps": [{"type": "file_read", "params": {"path": "a"}, "when": 1}]},
            "steps[0].when",
            "unknown field; allowed: id, type, params, description",
        ),
        (
            {"steps": [{"type": "file_read", "params": {"path": "a"}}], "triggers": 1},
            "triggers",
            "unknown field; allowed: name, description, version, inputs, steps, outputs",
        ),
        (
            {"name": "", "steps": [{"type": "file_read", "params": {"path": "a"}}]},
            "name",
            "must be a non-empty string of at most 200 characters",
        ),
        (
            {"version": 2, "steps": [{"type": "file_read", "params": {"path": "a"}}]},
            "version",
            "unsupported version 2; this executor supports 1",
        ),
        (
            {"steps": [{"type": "file_read", "params": {"path": "${{ inputs.x"}}]},
            "steps[0].params.path",
            "unclosed '${{' at 0: expected '}}'",
        ),
    ],
)
def test_shape_errors(doc: Any, path: str, message: str) -> None:
    assert problems(doc) == {path: message}


def test_not_json() -> None:
    with pytest.raises(InvalidInputError, match="workflow is not valid JSON"):
        parse_workflow("{nope", known_ops=catalogue())


def test_every_template_is_a_valid_workflow() -> None:
    names = list_templates()
    assert {"data-report", "summarise-url", "json-extract"} <= set(names)
    for name in names:
        wf = parse_workflow(load_template(name), known_ops=catalogue())
        assert wf.name == name


def test_unknown_template() -> None:
    with pytest.raises(NotFoundError, match="no template named 'nope'; known: data-report"):
        load_template("nope")
    with pytest.raises(NotFoundError):
        load_template("../pyproject")
