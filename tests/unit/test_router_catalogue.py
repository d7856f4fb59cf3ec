"""The model catalogue: bundled entries, lookups, a user file, the prompt-size check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.errors import InvalidInputError
from services.router.catalogue import (
    CatalogueEntry,
    ensure_fits,
    estimate_prompt_tokens,
    load_catalogue,
)
from services.router.chat import Message, ToolCall


@dataclass(frozen=True)
class Spec:
    """The fields of a routable model the catalogue looks at."""

    name: str
    provider: str
    provider_model: str = ""
    input_cost_per_token: float = 0.0
    output_cost_per_token: float = 0.0
    context_window: int = 0


def test_bundled_catalogue_covers_the_six_providers() -> None:
    catalogue = load_catalogue()
    providers = {entry.provider for entry in catalogue.entries}
    assert providers == {"openai", "anthropic", "gemini", "ollama", "azure", "cohere"}
    gpt4o = catalogue.find("openai", "gpt-4o")
    assert gpt4o is not None
    assert (gpt4o.input_per_mtok, gpt4o.output_per_mtok, gpt4o.context_window) == (2.5, 10.0, 128000)
    assert {"tools", "vision", "json_mode", "streaming"} <= gpt4o.capabilities
    embed = catalogue.find("openai", "text-embedding-3-small")
    assert embed is not None and embed.capabilities == {"embeddings"}


def test_lookup_by_alias_provider_model_and_azure_falling_back_to_openai_names() -> None:
    catalogue = load_catalogue()
    sonnet = catalogue.for_model(Spec("claude", "anthropic", "claude-3-5-sonnet-latest"))
    assert sonnet is not None and sonnet.name == "claude-3-5-sonnet"
    assert catalogue.find("azure", "o3-mini") == catalogue.find("openai", "o3-mini")
    assert catalogue.find("anthropic", "gpt-4o") is None  # a provider never borrows another's prices
    assert catalogue.for_model(Spec("my-model", "openai", "not-a-known-model")) is None


def test_cost_is_per_million_tokens() -> None:
    entry = CatalogueEntry("m", "openai", input_per_mtok=2.0, output_per_mtok=8.0)
    assert entry.cost(1_000_000, 500_000) == pytest.approx(6.0)
    assert entry.cost(0, 0) == 0.0


def test_a_models_own_cost_fields_win_over_the_catalogue() -> None:
    catalogue = load_catalogue()
    entry = catalogue.for_model(
        Spec("gpt-4o", "openai", "gpt-4o", input_cost_per_token=1e-6, context_window=1000)
    )
    assert entry is not None
    assert entry.input_per_mtok == pytest.approx(1.0)
    assert entry.output_per_mtok == 10.0  # not set on the model: the catalogue's
    assert entry.context_window == 1000
    unknown = catalogue.for_model(Spec("private", "openai", "private", output_cost_per_token=2e-6))
    assert unknown is not None and unknown.output_per_mtok == pytest.approx(2.0)


def test_a_user_file_extends_and_overrides(tmp_path: Path) -> None:
    user = tmp_path / "catalogue.yaml"
    user.write_text(
        "models:\n"
        "  - {name: gpt-4o, provider: openai, input_per_mtok: 1, output_per_mtok: 2, context_window: 64}\n"
        "  - {name: house-model, provider: ollama, aliases: [house], context_window: 4096,"
        " capabilities: [tools]}\n"
    )
    catalogue = load_catalogue(user)
    gpt4o = catalogue.find("openai", "gpt-4o-2024-08-06")  # the bundled alias now finds the user's entry
    assert gpt4o is not None and (gpt4o.input_per_mtok, gpt4o.context_window) == (1.0, 64)
    house = catalogue.find("ollama", "house")
    assert house is not None and house.name == "house-model" and house.capabilities == {"tools"}
    assert len(catalogue) == len(load_catalogue()) + 1


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("models:\n  - {name: x, provider: openai, input_per_mtok: -1}\n", "models[0].input_per_mtok"),
        ("models:\n  - {name: x, provider: acme}\n", "models[0].provider"),
        ("models:\n  - {name: x, provider: openai, capabilities: [telepathy]}\n", "models[0].capabilities"),
        ("models:\n  - {name: x, provider: openai, colour: red}\n", "models[0].colour"),
        ("models:\n  - just-a-name\n", "models[0]"),
        ("models: {name: x}\n", "models"),
        ("other: 1\n", "models"),
        ("models: [\n", "catalogue"),
    ],
)
def test_a_bad_user_file_is_refused_naming_the_field(tmp_path: Path, text: str, where: str) -> None:
    user = tmp_path / "bad.yaml"
    user.write_text(text)
    with pytest.raises(InvalidInputError) as caught:
        load_catalogue(user)
    assert caught.value.details["field"].startswith(where)
    assert str(user) in caught.value.message


def test_a_missing_user_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="cannot read model catalogue"):
        load_catalogue(tmp_path / "absent.yaml")


def test_prompt_estimate_counts_text_tool_calls_and_message_overhead() -> None:
    one = estimate_prompt_tokens([Message("user", "a" * 40)])
    assert one == 10 + 4
    spaced = estimate_prompt_tokens([Message("user", "a" + " " * 10_000 + "b")])
    assert spaced == 1 + 4  # runs of whitespace count once
    calls = estimate_prompt_tokens(
        [Message("assistant", "", tool_calls=(ToolCall("c1", "lookup", '{"q": "' + "x" * 30 + '"}'),))]
    )
    assert calls > 4


def prompt(tokens: int) -> list[Message]:
    """A one-message prompt the estimate puts at ``tokens`` tokens."""
    return [Message("user", "x" * (tokens - 4) * 4)]


def test_ensure_fits_refuses_only_when_no_candidate_can_take_it() -> None:
    ensure_fits("small", [("small", 100)], prompt(100))  # exactly at the window fits
    ensure_fits("small", [("small", 100)], [Message("user", "a" + " " * 5_000 + "b")])  # spaces count once
    ensure_fits("small", [("small", 100), ("big", 10_000)], prompt(5_000))  # a fallback can take it
    ensure_fits("small", [("small", 100), ("mystery", None)], prompt(5_000))  # unknown: the provider decides
    ensure_fits("small", [], prompt(5_000))
    with pytest.raises(InvalidInputError) as caught:
        ensure_fits("small", [("small", 100), ("big", 10_000)], prompt(20_000))
    err = caught.value
    assert err.details["field"] == "messages"
    assert err.details["context_windows"] == {"small": 100, "big": 10_000}
    assert err.details["prompt_tokens"] == 20_000
    assert "'small'" in err.message and "20000" in err.message and "small: 100" in err.message
