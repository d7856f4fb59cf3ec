"""Model groups: a model name served by several deployments, inheriting from the model entry, validated by path."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.router.registry import (
    ModelConfigError,
    Registry,
    SpecContext,
    build_spec,
    load_models,
    parse_models,
    spec_config,
)

SIM = "http://127.0.0.1:8090"
ROOT = Path(__file__).resolve().parents[2]


def ctx(**env: str) -> SpecContext:
    return SpecContext(env={"OPENCLAW_SIMULATOR_URL": SIM, **env}, simulator_url=SIM)


GROUP = """
models:
  - name: chat
    provider: openai
    endpoint: ${OPENCLAW_SIMULATOR_URL}/v1
    api_key_env: EAST_API_KEY
    max_concurrency: 8
    context_window: 8000
    input_cost_per_token: 0.000001
    deployments:
      - name: east
        weight: 3
        rpm: 600
        tpm: 100000
      - name: west
        endpoint: http://west.example:8000/v1
        api_key_env: WEST_API_KEY
        max_concurrency: 2
        output_cost_per_token: 0.000004
      - name: claude
        provider: anthropic
        provider_model: claude-3-5-haiku-latest
        weight: 0.1
"""


def test_a_group_lists_deployments_that_inherit_from_the_model() -> None:
    (spec,) = parse_models(GROUP, ctx(EAST_API_KEY="k-east", WEST_API_KEY="k-west"))
    east, west, claude = spec.targets
    assert (east.name, east.endpoint, east.weight, east.rpm, east.tpm) == (
        "east",
        f"{SIM}/v1",
        3,
        600,
        100000,
    )
    assert east.credential == "k-east" and east.max_concurrency == 8 and east.context_window == 8000
    assert east.simulated and east.input_cost_per_token == 0.000001 and east.provider_model == "chat"
    assert (west.endpoint, west.credential, west.max_concurrency) == (
        "http://west.example:8000/v1",
        "k-west",
        2,
    )
    assert not west.simulated and west.output_cost_per_token == 0.000004
    # Another provider's deployment does not take the model's endpoint: it gets its provider's default.
    assert (claude.provider, claude.endpoint) == ("anthropic", "https://api.anthropic.com")
    assert claude.provider_model == "claude-3-5-haiku-latest" and claude.weight == 0.1


def test_the_single_endpoint_form_is_one_deployment() -> None:
    spec = build_spec(
        {"name": "m", "endpoint": f"{SIM}/v1", "max_concurrency": 4, "context_window": 100, "rpm": 60}, ctx()
    )
    assert spec.deployments == ()
    (only,) = spec.targets
    assert (only.name, only.endpoint, only.max_concurrency, only.context_window, only.rpm) == (
        "default",
        f"{SIM}/v1",
        4,
        100,
        60,
    )


@pytest.mark.parametrize(
    "path",
    [
        "",
        "deploy/compose/models.yaml",
        "deploy/k8s/base/models.yaml",
        "deploy/k8s/components/gpu-model-server/models.yaml",
    ],
)
def test_existing_tables_still_load_as_single_deployments(path: str) -> None:
    specs = load_models(str(ROOT / path) if path else "", ctx())
    assert specs and all(len(s.targets) == 1 and s.targets[0].endpoint == s.endpoint for s in specs)


def test_a_group_survives_the_round_trip_through_its_definition() -> None:
    c = ctx(EAST_API_KEY="k-east", WEST_API_KEY="k-west")
    (spec,) = parse_models(GROUP, c)
    assert build_spec(spec_config(spec), c) == spec


@pytest.mark.parametrize(
    ("deployments", "field", "problem"),
    [
        ([{"name": "a", "weight": -1}], "deployments[0].weight", "greater than or equal to 0"),
        (
            [{"name": "a", "max_concurrency": 0}],
            "deployments[0].max_concurrency",
            "greater than or equal to 1",
        ),
        ([{"name": "a", "rpm": -5}], "deployments[0].rpm", "greater than or equal to 0"),
        ([{"name": "a", "tpm": 10**13}], "deployments[0].tpm", "less than or equal to"),
        (
            [{"name": "a", "input_cost_per_token": 5}],
            "deployments[0].input_cost_per_token",
            "less than or equal",
        ),
        (
            [{"name": "a", "context_window": -1}],
            "deployments[0].context_window",
            "greater than or equal to 0",
        ),
        ([{"name": "a"}, {"name": "a"}], "deployments[1].name", "used twice"),
        ([{"name": "a", "colour": "red"}], "deployments[0].colour", "unknown field"),
        ([{"name": "a", "endpoint": "ftp://x"}], "deployments[0].endpoint", "http"),
        ([{"name": "a", "provider": "azure"}], "deployments[0].endpoint", "required for provider 'azure'"),
        (
            [{"name": "a", "api_key_env": "OPENCLAW_REDIS_URL"}],
            "deployments[0].api_key_env",
            "not an allowed",
        ),
        ([{"name": "a", "weight": 0}], "deployments", "weight above 0"),
        ([{"name": "bad name"}], "deployments[0].name", "match"),
    ],
)
def test_bad_deployments_are_refused_naming_the_path(
    deployments: list[dict[str, object]], field: str, problem: str
) -> None:
    with pytest.raises(ModelConfigError) as info:
        build_spec({"name": "m", "endpoint": f"{SIM}/v1", "deployments": deployments}, ctx())
    assert info.value.field == field
    assert problem in str(info.value) and f"model 'm': {field}:" in str(info.value)


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"rpm": -1}, "rpm"),
        ({"tpm": -1}, "tpm"),
        ({"context_window": 10**9}, "context_window"),
        ({"output_cost_per_token": -0.1}, "output_cost_per_token"),
        ({"deployments": [{"name": str(i)} for i in range(65)]}, "deployments"),
    ],
)
def test_absurd_model_limits_are_refused(entry: dict[str, object], field: str) -> None:
    with pytest.raises(ModelConfigError) as info:
        build_spec({"name": "m", "endpoint": f"{SIM}/v1", **entry}, ctx())
    assert info.value.field == field


def test_a_bad_group_update_changes_nothing() -> None:
    c = ctx(EAST_API_KEY="k", WEST_API_KEY="k")
    reg = Registry(parse_models(GROUP, c), ctx=c)
    before = reg.snapshot
    with pytest.raises(ModelConfigError):
        reg.update("chat", {"deployments": ({"name": "east", "weight": -2},)})
    assert reg.snapshot is before
    spec = reg.update("chat", {"deployments": ({"name": "east"}, {"name": "canary", "weight": 0.05})})
    assert [(d.name, d.weight) for d in spec.targets] == [("east", 1.0), ("canary", 0.05)]
    assert reg.snapshot.version == before.version + 1


def test_model_level_changes_keep_reaching_deployments_that_do_not_set_the_field() -> None:
    c = ctx(EAST_API_KEY="k", WEST_API_KEY="k")
    reg = Registry(parse_models(GROUP, c), ctx=c)
    spec = reg.update("chat", {"max_concurrency": 20, "context_window": 4000})
    east, west, claude = spec.targets
    assert (east.max_concurrency, west.max_concurrency, claude.max_concurrency) == (
        20,
        2,
        20,
    )  # west sets its own
    assert {d.context_window for d in spec.targets} == {4000}
    assert build_spec(spec_config(spec), c) == spec
