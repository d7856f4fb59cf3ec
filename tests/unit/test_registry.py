"""The model table: YAML loading, validation naming model and field, versioned snapshots, fallback chains."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import AlreadyExistsError, NotFoundError
from services.router.registry import (
    DEFAULT_API_KEY_ENV_PATTERN,
    DEFAULT_MODELS_FILE,
    ModelConfigError,
    Registry,
    SpecContext,
    build_spec,
    load_models,
    parse_models,
    redact_url,
    substitute,
)

SIM = "http://127.0.0.1:8090"


def ctx(**env: str) -> SpecContext:
    return SpecContext(env={"OPENCLAW_SIMULATOR_URL": SIM, **env}, simulator_url=SIM)


def registry(*entries: dict[str, object], **env: str) -> Registry:
    c = ctx(**env)
    return Registry([build_spec(e, c) for e in entries], ctx=c)


def test_default_table_is_simulated_without_keys() -> None:
    specs = {s.name: s for s in load_models("", ctx())}
    assert set(specs) == {
        "gpt-4-mini",
        "llama-3",
        "claude-3",
        "echo",
        "sim-embed",
        "sim-gemini",
        "sim-ollama",
        "sim-azure",
        "sim-cohere",
    }
    assert all(s.simulated and not s.has_api_key for s in specs.values())
    assert specs["claude-3"].provider == "anthropic"
    assert specs["claude-3"].fallback_models == ("gpt-4-mini",)
    assert specs["claude-3"].endpoint == SIM
    assert specs["gpt-4-mini"].endpoint == f"{SIM}/v1"
    assert {specs[n].provider for n in ("gpt-4-mini", "llama-3", "echo")} == {"openai"}


def test_real_keys_add_real_models() -> None:
    specs = {
        s.name: s
        for s in load_models(DEFAULT_MODELS_FILE, ctx(OPENAI_API_KEY="sk-o", ANTHROPIC_API_KEY="sk-a"))
    }
    assert {"gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet"} <= set(specs)
    gpt = specs["gpt-4o"]
    assert (gpt.endpoint, gpt.simulated, gpt.credential) == ("https://api.openai.com/v1", False, "sk-o")
    claude = specs["claude-3-5-sonnet"]
    assert (claude.endpoint, claude.provider, claude.credential) == (
        "https://api.anthropic.com",
        "anthropic",
        "sk-a",
    )
    only_openai = {s.name for s in load_models("", ctx(OPENAI_API_KEY="sk-o"))}
    assert "gpt-4o" in only_openai and "claude-3-5-sonnet" not in only_openai


def test_yaml_substitution_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        "  - name: local\n"
        "    endpoint: ${LOCAL_URL:-http://localhost:8000}/v1/chat\n"
        "    max_concurrency: ${LOCAL_MAXC:-3}\n"
        "    api_key_env: LOCAL_API_KEY\n"
        "  - name: claude\n"
        "    provider: anthropic\n"
        "    fallback_models: [local]\n"
        "    api_key: ${CLAUDE_KEY}\n"
    )
    specs = {s.name: s for s in load_models(path, ctx(LOCAL_API_KEY="k1", CLAUDE_KEY="k2"))}
    local, claude = specs["local"], specs["claude"]
    assert local.endpoint == "http://localhost:8000/v1/chat"
    assert local.max_concurrency == 3
    assert (local.credential, local.api_key) == ("k1", "")
    assert local.provider == "openai" and local.provider_model == "local"
    assert local.timeout_seconds == 60 and not local.simulated
    assert claude.endpoint == "https://api.anthropic.com"
    assert claude.credential == "k2"


def test_substitute() -> None:
    env = {"A": "x", "EMPTY": ""}
    assert substitute("${A}/${B:-d}/${EMPTY:-e}/${EMPTY}", env) == "x/d/e/"
    with pytest.raises(KeyError, match="MISSING"):
        substitute("${MISSING}", env)


def test_unset_variable_names_model_and_variable() -> None:
    text = "models:\n  - name: m\n    api_key: ${NOPE}\n"
    with pytest.raises(ModelConfigError, match=r"model 'm'.*NOPE") as info:
        parse_models(text, ctx())
    assert info.value.model == "m"


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"name": "m", "max_concurrency": 0}, "max_concurrency"),
        ({"name": "m", "provider": "bedrock"}, "provider"),
        ({"name": "m", "provider": "azure"}, "endpoint"),  # no default: each resource has its own URL
        ({"name": "m", "endpoint": "ftp://x"}, "endpoint"),
        ({"name": "m", "timeout_seconds": -1}, "timeout_seconds"),
        ({"name": "m", "colour": "red"}, "colour"),
        ({"name": "m", "api_key_env": "NOT A VAR"}, "api_key_env"),
        ({"name": "bad name!"}, "name"),
    ],
)
def test_bad_field_names_model_and_field(entry: dict[str, object], field: str) -> None:
    with pytest.raises(ModelConfigError) as info:
        build_spec(entry, ctx(), source="models.yaml")
    assert info.value.field == field
    assert field in info.value.message and "models.yaml" in info.value.message


ROUTER_SECRETS = {
    "OPENCLAW_REDIS_URL": "redis://:hunter2@redis:6379/0",
    "OPENCLAW_ROUTER_ADMIN_TOKEN": "adm-s3cr3t",
}


@pytest.mark.parametrize(
    "variable", [*ROUTER_SECRETS, "PATH", "openai_api_key", "API_KEY", "OPENAI_API_KEY_X"]
)
def test_api_key_env_names_only_allowed_key_variables(variable: str) -> None:
    with pytest.raises(ModelConfigError) as info:
        build_spec({"name": "m", "api_key_env": variable}, ctx(**ROUTER_SECRETS, PATH="/bin"))
    assert (info.value.model, info.value.field) == ("m", "api_key_env")
    assert DEFAULT_API_KEY_ENV_PATTERN in info.value.message
    assert "hunter2" not in info.value.message and "adm-s3cr3t" not in info.value.message


def test_api_key_env_allow_list_applies_to_the_yaml_table_and_admin_changes() -> None:
    text = "models:\n  - name: leak\n    api_key_env: OPENCLAW_REDIS_URL\n"
    with pytest.raises(
        ModelConfigError, match=r"^models\.yaml: model 'leak': api_key_env: .*_API_KEY"
    ) as info:
        parse_models(text, ctx(**ROUTER_SECRETS), source="models.yaml")
    assert "hunter2" not in info.value.message
    reg = registry({"name": "a", "api_key_env": "VLLM_API_KEY"}, VLLM_API_KEY="sk-v", **ROUTER_SECRETS)
    assert reg.snapshot.models["a"].credential == "sk-v"
    with pytest.raises(ModelConfigError, match="api_key_env"):
        reg.add({"name": "b", "api_key_env": "OPENCLAW_REDIS_URL"})
    with pytest.raises(ModelConfigError, match="api_key_env"):
        reg.update("a", {"api_key_env": "OPENCLAW_REDIS_URL"})
    assert reg.snapshot.version == 1 and reg.snapshot.models["a"].credential == "sk-v"
    custom = SpecContext(env={"VLLM_TOKEN": "t"}, api_key_env_pattern=r"^VLLM_TOKEN$")
    assert build_spec({"name": "v", "api_key_env": "VLLM_TOKEN"}, custom).credential == "t"


@pytest.mark.parametrize(
    ("endpoint", "shown"),
    [
        ("https://user:pw@llm.example.com:8443/v1?api-key=qs#frag", "https://llm.example.com:8443/v1"),
        ("http://token@[::1]:8000/v1/chat", "http://[::1]:8000/v1/chat"),
        ("http://host?key=qs", "http://host"),
        ("http://127.0.0.1:8000/v1/chat/completions", "http://127.0.0.1:8000/v1/chat/completions"),
    ],
)
def test_shown_endpoint_drops_userinfo_and_query(endpoint: str, shown: str) -> None:
    assert redact_url(endpoint) == shown
    spec = build_spec({"name": "m", "endpoint": endpoint}, ctx())
    assert spec.shown_endpoint == shown and spec.endpoint == endpoint


def test_bad_table_shapes() -> None:
    with pytest.raises(ModelConfigError, match="unknown top-level key"):
        parse_models("model: []\n", ctx())
    with pytest.raises(ModelConfigError, match="must be a list"):
        parse_models("models: {a: 1}\n", ctx())
    with pytest.raises(ModelConfigError, match="not valid YAML"):
        parse_models("models: [\n", ctx())
    with pytest.raises(ModelConfigError, match="defined more than once"):
        parse_models("models:\n  - name: a\n  - name: a\n", ctx())
    with pytest.raises(ModelConfigError, match="cannot read"):
        load_models("/nonexistent/models.yaml", ctx())


def test_unknown_fallback_rejected_at_load_add_and_update() -> None:
    with pytest.raises(ModelConfigError, match=r"model 'a': fallback_models: unknown model 'zz'"):
        parse_models("models:\n  - name: a\n    fallback_models: [zz]\n", ctx())
    reg = registry({"name": "a"})
    with pytest.raises(ModelConfigError, match="fallback_models"):
        reg.add({"name": "b", "fallback_models": ["zz"]})
    with pytest.raises(ModelConfigError, match="fallback_models"):
        reg.update("a", {"fallback_models": ("zz",)})
    assert reg.snapshot.version == 1 and set(reg.snapshot.models) == {"a"}


def test_changes_swap_versions_and_old_snapshots_stay_intact() -> None:
    reg = registry({"name": "a", "max_concurrency": 2})
    before = reg.snapshot
    reg.add({"name": "b", "fallback_models": ["a"]})
    reg.update("a", {"max_concurrency": 7})
    after = reg.snapshot
    assert (before.version, after.version) == (1, 3)
    assert set(before.models) == {"a"} and before.models["a"].max_concurrency == 2
    assert after.models["a"].max_concurrency == 7
    assert after.models["b"].fallback_models == ("a",)
    with pytest.raises(TypeError):
        after.models["c"] = after.models["a"]  # type: ignore[index]


def test_add_existing_name_fails() -> None:
    reg = registry({"name": "a"})
    with pytest.raises(AlreadyExistsError, match="'a' already exists"):
        reg.add({"name": "a"})


def test_update_keeps_other_fields_and_reresolves_keys() -> None:
    reg = registry(
        {"name": "a", "endpoint": "http://h/v1", "max_concurrency": 4, "api_key_env": "K1_API_KEY"},
        K1_API_KEY="one",
        K2_API_KEY="two",
    )
    spec = reg.update("a", {"timeout_seconds": 5.0})
    assert (spec.endpoint, spec.max_concurrency, spec.timeout_seconds, spec.credential) == (
        "http://h/v1",
        4,
        5.0,
        "one",
    )
    assert reg.update("a", {"api_key_env": "K2_API_KEY"}).credential == "two"
    assert reg.update("a", {"api_key": "explicit"}).credential == "explicit"
    with pytest.raises(ModelConfigError, match="cannot be renamed"):
        reg.update("a", {"name": "b"})
    with pytest.raises(ModelConfigError, match="not a model field"):
        reg.update("a", {"colour": "red"})
    with pytest.raises(NotFoundError):
        reg.update("zz", {"max_concurrency": 1})


def test_provider_switch_follows_default_endpoint_and_simulator_label() -> None:
    reg = registry({"name": "a"}, {"name": "s", "endpoint": f"{SIM}/v1"})
    assert reg.snapshot.models["s"].simulated and not reg.snapshot.models["a"].simulated
    assert reg.update("a", {"provider": "anthropic"}).endpoint == "https://api.anthropic.com"
    moved = reg.update("s", {"endpoint": "https://api.openai.com/v1"})
    assert not moved.simulated


def test_remove_refuses_while_used_as_fallback() -> None:
    reg = registry({"name": "a"}, {"name": "b", "fallback_models": ["a"]})
    with pytest.raises(ModelConfigError, match="fallback of b"):
        reg.remove("a")
    table = reg.remove("b")
    assert table.version == 2 and set(table.models) == {"a"}
    assert reg.remove("a").version == 3 and len(reg.snapshot) == 0
    with pytest.raises(NotFoundError):
        reg.remove("a")


def test_unknown_model_lists_available() -> None:
    reg = registry({"name": "a"}, {"name": "b"})
    with pytest.raises(NotFoundError, match=r"model 'zz' not found; available models: a, b") as info:
        reg.snapshot.require("zz")
    assert info.value.details["available"] == ["a", "b"]


def test_chain_breadth_first_each_model_once() -> None:
    reg = registry(
        {"name": "d"},
        {"name": "c", "fallback_models": ["d", "a"]},
        {"name": "b", "fallback_models": ["d"]},
        {"name": "a", "fallback_models": ["b", "c", "a"]},
    )
    assert [s.name for s in reg.snapshot.chain("a")] == ["a", "b", "c", "d"]
    assert [s.name for s in reg.snapshot.chain("c")] == ["c", "d", "a", "b"]
    assert reg.snapshot.models["a"].fallback_models == ("b", "c")  # self-reference dropped


def test_keys_never_in_repr() -> None:
    spec = build_spec({"name": "a", "api_key": "sk-secret-123"}, ctx())
    assert "sk-secret-123" not in repr(spec)
    assert spec.has_api_key


def test_listeners_see_old_and_new() -> None:
    reg = registry({"name": "a"})
    seen: list[tuple[int, int]] = []
    reg.subscribe(lambda old, new: seen.append((old.version, new.version)))
    reg.add({"name": "b"})
    reg.remove("b")
    assert seen == [(1, 2), (2, 3)]
