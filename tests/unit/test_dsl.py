"""The workflow DSL: the article's form, ids, references and every validation error named by its path."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from services.common.errors import InvalidInputError, NotFoundError
from services.executor.dsl import parse_workflow
from services.executor.ops import catalogue
from services.executor.schema import schema_problems, workflow_schema
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
    wf = parse_workflow(json.dumps(ARTICLE), known_ops=["file_download", "llm_call"])
    assert len(wf.steps) == 2


def test_unknown_step_type_is_named_with_its_path() -> None:
    doc = {"name": "x", "steps": [{"type": "file_read", "params": {"path": "a"}}, {"type": "fly"}]}
    with pytest.raises(InvalidInputError) as err:
        parse_workflow(doc, known_ops=catalogue())
    assert (
        err.value.message
        == "steps[1].type: unknown step type 'fly'; `openclaw ops list` lists the operations"
    )
    assert problems({"steps": [{"type": "file_raed"}]})["steps[0].type"].startswith(
        "unknown step type 'file_raed'; did you mean file_read"
    )
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
            {"steps": [{"type": "file_read", "params": {"path": "a"}, "wehn": 1}]},
            "steps[0].wehn",
            "unknown field; allowed: id, type, description, params, when, catch, continue_on_error, timeout, retry",
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
    with pytest.raises(NotFoundError, match=r"no template named 'nope'; known: .*data-report"):
        load_template("nope")
    with pytest.raises(NotFoundError):
        load_template("../pyproject")


# -- the fuller DSL: conditions, retries, control steps, scoping ------------------------------------------

FULL: dict[str, Any] = {
    "version": 1,
    "name": "full",
    "inputs": {"urls": {"required": True}},
    "steps": [
        {
            "id": "each",
            "type": "foreach",
            "items": "${{ inputs.urls }}",
            "concurrency": 4,
            "steps": [
                {
                    "id": "fetch",
                    "type": "http_request",
                    "params": {"url": "${{ item }}"},
                    "timeout": 30,
                    "retry": {
                        "attempts": 3,
                        "backoff": {"initial_s": 1, "max_s": 10, "multiplier": 3},
                        "on": ["unavailable"],
                    },
                    "continue_on_error": True,
                }
            ],
        },
        {
            "id": "fan",
            "type": "parallel",
            "branches": [
                [
                    {
                        "id": "count",
                        "type": "json_transform",
                        "params": {"expression": "length(@)", "input": "${{ steps.each.output }}"},
                    }
                ],
                [
                    {
                        "id": "save",
                        "type": "file_write",
                        "params": {
                            "path": "out.json",
                            "content": "${{ steps.each.output }}",
                            "format": "json",
                        },
                        "catch": [
                            {
                                "id": "note",
                                "type": "file_write",
                                "params": {"path": "err.txt", "content": "${{ error.message }}"},
                            }
                        ],
                    }
                ],
            ],
        },
        {
            "id": "report",
            "type": "file_read",
            "params": {"path": "out.json"},
            "when": "${{ steps.count.output > 0 }}",
        },
    ],
    "outputs": {"count": "${{ steps.count.output }}", "saved": "${{ steps.save.output.path }}"},
}


def test_the_full_dsl_parses() -> None:
    wf = parse_workflow(FULL, known_ops=catalogue())
    each, fan, report = wf.steps
    assert each.type == "foreach" and each.concurrency == 4 and [s.id for s in each.body] == ["fetch"]
    fetch = each.body[0]
    assert fetch.path == "steps[0].steps[0]" and fetch.timeout_s == 30.0 and fetch.continue_on_error
    assert fetch.retry is not None and fetch.retry.on == frozenset({"unavailable"})
    assert [fetch.retry.delay_s(n) for n in (1, 2, 3)] == [1.0, 3.0, 9.0]
    assert [[s.id for s in b] for b in fan.branches] == [["count"], ["save"]]
    assert fan.branches[1][0].catch[0].path == "steps[1].branches[1][0].catch[0]"
    assert report.when == "${{ steps.count.output > 0 }}"
    assert wf.step("note").type == "file_write"


def test_control_step_problems_are_named_by_path() -> None:
    found = problems(
        {
            "steps": [
                {"id": "a", "type": "foreach", "items": 3, "concurrency": 0, "steps": []},
                {
                    "id": "b",
                    "type": "parallel",
                    "branches": [[{"type": "file_read", "params": {"path": "x"}}]],
                },
                {"id": "c", "type": "workflow", "inputs": {}},
                {
                    "id": "d",
                    "type": "file_read",
                    "params": {"path": "x"},
                    "timeout": 0,
                    "retry": {"attempts": 0, "tries": 1},
                },
                {
                    "id": "e",
                    "type": "file_read",
                    "params": {"path": "x"},
                    "retry": {"attempts": 2, "backoff": {"initial_s": 99}, "on": "all"},
                },
                {
                    "id": "f",
                    "type": "file_read",
                    "params": {"path": "x"},
                    "continue_on_error": True,
                    "catch": [{"id": "g", "type": "file_read", "params": {"path": "y"}}],
                },
                {
                    "id": "h",
                    "type": "foreach",
                    "items": [],
                    "steps": [{"id": "i", "type": "file_read", "params": {"path": "x"}}],
                    "params": {},
                },
            ]
        }
    )
    assert found == {
        "steps[0].items": "must be a list, or an expression giving one",
        "steps[0].concurrency": "must be an integer from 1 to 32",
        "steps[0].steps": "must be a non-empty list of steps",
        "steps[1].branches": "required: a list of 2 to 16 branches, each a list of steps",
        "steps[2]": "a workflow step needs exactly one of template (a name) and workflow (a document)",
        "steps[3].timeout": "must be a number of seconds above 0 and at most 1500",
        "steps[3].retry.tries": "unknown field; allowed: attempts, backoff, on",
        "steps[3].retry.attempts": "required: tries in all, 1 to 10",
        "steps[4].retry.backoff.initial_s": "must be a number above 0 and at most 60",
        "steps[4].retry.on": "must be a non-empty list of error codes, e.g. ['unavailable', 'timeout']",
        "steps[5].continue_on_error": "a step with catch steps cannot also continue on error",
        "steps[6].params": "unknown field; allowed: id, type, description, when, catch, continue_on_error, items, concurrency, steps",
    }


def test_step_ids_are_unique_across_branches_and_bodies() -> None:
    read = {"type": "file_read", "params": {"path": "x"}}
    found = problems(
        {
            "steps": [
                {"id": "p", "type": "parallel", "branches": [[{"id": "x", **read}], [{"id": "x", **read}]]},
                {"id": "e", "type": "foreach", "items": [], "steps": [{"id": "p", **read}]},
            ]
        }
    )
    assert found == {
        "steps[0].branches[1][0].id": "duplicate step id 'x' (also steps[0].branches[0][0])",
        "steps[1].steps[0].id": "duplicate step id 'p' (also steps[0])",
    }


def test_what_each_expression_may_see() -> None:
    def read(step_id: str, path: str, **extra: Any) -> dict[str, Any]:
        return {"id": step_id, "type": "file_read", "params": {"path": path}, **extra}

    found = problems(
        {
            "steps": [
                read("top", "${{ item }}", when="${{ error.code == 'x' }}"),
                {
                    "id": "fan",
                    "type": "parallel",
                    "branches": [
                        [read("l1", "a"), read("l2", "${{ prev.output.path }}")],
                        [read("r1", "${{ steps.l1.output.path }}")],
                    ],
                },
                {
                    "id": "each",
                    "type": "foreach",
                    "items": "${{ steps.l2.output }}",
                    "steps": [read("body", "${{ item }}${{ index }}${{ steps.fan.output }}")],
                },
                read(
                    "after",
                    "${{ steps.body.output.path }}",
                    catch=[read("c", "${{ error.message }}${{ steps.r1.output }}")],
                ),
                read("later", "${{ steps.c.output }}"),
            ]
        }
    )
    assert found == {
        "steps[0].params.path": "${{ item }}: 'item' is only available in the steps of a foreach",
        "steps[0].when": "${{ error.code }}: 'error' is only available in catch steps",
        "steps[1].branches[1][0].params.path": (
            "${{ steps.l1.output.path }}: step 'l1' is not visible here (it is inside a foreach, a catch or another "
            "branch); use the enclosing step's output"
        ),
        "steps[3].params.path": (
            "${{ steps.body.output.path }}: step 'body' is not visible here (it is inside a foreach, a catch or "
            "another branch); use the enclosing step's output"
        ),
        "steps[4].params.path": (
            "${{ steps.c.output }}: step 'c' is not visible here (it is inside a foreach, a catch or another "
            "branch); use the enclosing step's output"
        ),
    }


def test_called_workflows_are_checked_with_their_inputs_and_depth() -> None:
    inner = {
        "inputs": {"who": {"required": True}},
        "steps": [{"type": "file_read", "params": {"path": "${{ inputs.who }}"}}],
    }
    found = problems(
        {
            "steps": [
                {"id": "a", "type": "workflow", "workflow": inner, "inputs": {"whom": 1}},
                {"id": "b", "type": "workflow", "workflow": {"steps": [{"type": "fly"}]}},
                {"id": "c", "type": "workflow", "template": "nope"},
                {
                    "id": "d",
                    "type": "workflow",
                    "template": "summarise-url",
                    "inputs": {"url": "${{ steps.a.output }}"},
                },
            ]
        }
    )
    assert found["steps[0].inputs.whom"] == "the called workflow declares no input 'whom'; declared: who"
    assert found["steps[0].inputs.who"] == "required by the called workflow"
    assert found["steps[1].workflow.steps[0].type"].startswith("unknown step type 'fly'")
    assert found["steps[2].template"].startswith("no template named 'nope'")
    assert not any(p.startswith("steps[3]") for p in found)

    deep: dict[str, Any] = {"steps": [{"type": "file_read", "params": {"path": "x"}}]}
    for _ in range(5):
        deep = {"steps": [{"type": "workflow", "workflow": deep}]}
    assert "nested deeper than 4 levels" in next(iter(problems(deep).values()))


def test_unknown_versions_are_rejected() -> None:
    base = {"steps": [{"type": "file_read", "params": {"path": "a"}}]}
    assert parse_workflow({**base, "version": 1}, known_ops=catalogue()).version == 1
    for version in (2, "1", True, 0):
        assert "version" in problems({**base, "version": version})


# -- the JSON Schema and the parser agree ----------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "workflows.md"


def doc_examples() -> list[dict[str, Any]]:
    """Every JSON block of the DSL reference that is a workflow document (it has steps)."""
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    docs = [json.loads(b) for b in blocks]
    return [d for d in docs if isinstance(d, dict) and "steps" in d]


def test_the_schema_is_valid_draft_2020_12() -> None:
    schema = workflow_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_every_documented_example_and_template_conforms_to_the_schema_and_parses() -> None:
    examples = doc_examples()
    assert len(examples) >= 8  # the reference shows every construct
    for doc in [*examples, *(load_template(n) for n in list_templates())]:
        assert schema_problems(doc) == [], doc.get("name")
        parse_workflow(doc, known_ops=catalogue())
    assert schema_problems(FULL) == [] and schema_problems(ARTICLE) == []


@pytest.mark.parametrize(
    "doc",
    [
        {"name": "x"},
        {"steps": []},
        {"stpes": [], "steps": [{"type": "file_read", "params": {"path": "a"}}]},
        {"version": 2, "steps": [{"type": "file_read", "params": {"path": "a"}}]},
        {"name": "", "steps": [{"type": "file_read", "params": {"path": "a"}}]},
        {"steps": [{"type": "file_read", "params": {"path": "a"}, "wehn": 1}]},
        {"steps": [{"id": "9x", "type": "file_read", "params": {"path": "a"}}]},
        {"steps": [{"type": "file_read", "params": [1]}]},
        {"steps": [{"type": "file_read", "params": {"path": "a"}, "timeout": 0}]},
        {"steps": [{"type": "file_read", "params": {"path": "a"}, "timeout": 5000}]},
        {"steps": [{"type": "file_read", "params": {"path": "a"}, "retry": {"attempts": 11}}]},
        {"steps": [{"type": "file_read", "params": {"path": "a"}, "retry": {"backoff": {}}}]},
        {"steps": [{"type": "file_read", "params": {"path": "a"}, "retry": {"attempts": 2, "on": []}}]},
        {
            "steps": [
                {"type": "foreach", "items": 1, "steps": [{"type": "file_read", "params": {"path": "a"}}]}
            ]
        },
        {"steps": [{"type": "foreach", "items": [], "steps": []}]},
        {
            "steps": [
                {
                    "type": "foreach",
                    "items": [],
                    "concurrency": 33,
                    "steps": [{"type": "file_read", "params": {"path": "a"}}],
                }
            ]
        },
        {
            "steps": [
                {
                    "type": "foreach",
                    "items": [],
                    "params": {},
                    "steps": [{"type": "file_read", "params": {"path": "a"}}],
                }
            ]
        },
        {"steps": [{"type": "parallel", "branches": [[{"type": "file_read", "params": {"path": "a"}}]]}]},
        {"steps": [{"type": "workflow"}]},
        {"steps": [{"type": "workflow", "template": "summarise-url", "workflow": {"steps": []}}]},
        {"steps": [{"type": "workflow", "workflow": {"steps": [{"type": "file_read"}], "extra": 1}}]},
        {
            "steps": [
                {
                    "type": "file_read",
                    "params": {"path": "a"},
                    "continue_on_error": True,
                    "catch": [{"type": "file_read", "params": {"path": "b"}}],
                }
            ]
        },
        {"steps": [{"type": "file_read", "params": {"path": "a"}, "catch": []}]},
        {"inputs": {"1x": {}}, "steps": [{"type": "file_read", "params": {"path": "a"}}]},
        {"inputs": {"x": {"required": "yes"}}, "steps": [{"type": "file_read", "params": {"path": "a"}}]},
        {"steps": [{"type": "file_read", "params": {"path": "a"}}], "outputs": {}},
        {"steps": [{"type": "wait"}]},
        {"steps": [{"type": "wait", "seconds": 1, "until": "2026-01-01T00:00:00Z"}]},
        {"steps": [{"type": "wait", "seconds": 1, "timeout": 5}]},
        {"steps": [{"type": "wait", "signal": "a b"}]},
        {"steps": [{"type": "wait", "seconds": -1}]},
        {"steps": [{"type": "wait", "signal": "go", "retry": {"attempts": 2}}]},
    ],
)
def test_the_schema_and_the_parser_reject_the_same_shapes(doc: dict[str, Any]) -> None:
    assert schema_problems(doc), "the schema accepts it"
    assert problems(doc), "the parser accepts it"


def test_wait_steps_are_checked() -> None:
    found = problems(
        {
            "steps": [
                {"id": "a", "type": "wait"},
                {"id": "b", "type": "wait", "seconds": 5, "signal": "x"},
                {"id": "c", "type": "wait", "until": "tomorrow"},
                {"id": "d", "type": "wait", "until": "2026-12-01T09:00:00"},
                {"id": "e", "type": "wait", "signal": "no spaces", "timeout": 5},
                {"id": "f", "type": "wait", "seconds": -1, "timeout": 5},
                {"id": "g", "type": "wait", "until": "${{ item }}"},
            ]
        }
    )
    assert found == {
        "steps[0]": "a wait step needs exactly one of seconds, until (a time) and signal (a name)",
        "steps[1]": "a wait step needs exactly one of seconds, until (a time) and signal (a name)",
        "steps[2].until": "must be an ISO 8601 time with its offset, or an expression giving one",
        "steps[3].until": "must be an ISO 8601 time with its offset, or an expression giving one",
        "steps[4].signal": "signal names are 1-64 letters, digits, '_', '.' and '-', starting with a letter",
        "steps[5].seconds": "must be a number of seconds from 0 to 2.592e+06",
        "steps[5].timeout": "only a wait for a signal has a timeout",
        "steps[6].until": "${{ item }}: 'item' is only available in the steps of a foreach",
    }
    wf = parse_workflow(
        {"steps": [{"id": "w", "type": "wait", "signal": "approval", "timeout": 60}]}, known_ops=catalogue()
    )
    assert (wf.steps[0].signal, wf.steps[0].timeout_s) == ("approval", 60.0)


def test_step_retries_with_timeouts_stay_within_one_delivery() -> None:
    step = {"type": "file_read", "params": {"path": "a"}, "timeout": 600, "retry": {"attempts": 3}}
    assert problems({"steps": [step]}) == {
        "steps[0].retry": "3 tries of up to 600 s each, with pauses, may take 1860 s; keep it within 1500 s "
        "and leave longer waits to the task's retries"
    }
    parse_workflow({"steps": [{**step, "timeout": 400}]}, known_ops=catalogue())
