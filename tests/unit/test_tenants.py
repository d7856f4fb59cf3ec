"""Tenant policies: what each allows, how bad policies are refused, roles, and the network allow-lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import InvalidInputError, PermissionDeniedError
from services.common.tenants import TenantDirectory, TenantPolicy, load_file, parse_policy, permitted


def test_patterns_allow_and_deny_models_operations_and_channels() -> None:
    policy = parse_policy(
        "acme",
        {
            "models": ["gpt-4-*", "llama-3"],
            "operations": ["file_*", "text_*", "llm_*"],
            "denied_operations": ["file_delete"],
            "channels": ["slack"],
        },
    )
    assert policy.allows_model("gpt-4-mini") and policy.allows_model("llama-3")
    assert not policy.allows_model("claude-3") and not policy.allows_model("llama-3-70b")
    assert policy.allows_operation("file_read") and not policy.allows_operation("file_delete")
    assert not policy.allows_operation("http_request")
    assert policy.allows_channel("slack") and not policy.allows_channel("telegram")
    with pytest.raises(PermissionDeniedError, match="not allowed for this tenant: file_delete, http_request"):
        policy.check_operations({"file_read", "http_request", "file_delete"})
    with pytest.raises(PermissionDeniedError, match="'claude-3' is not allowed"):
        policy.check_model("claude-3")


def test_the_default_policy_allows_everything_with_sane_quotas() -> None:
    policy = TenantPolicy()
    assert policy.allows_model("anything") and policy.allows_operation("sql_query")
    assert policy.quotas.requests_per_minute == 600 and not policy.log_prompts


def test_a_bad_policy_is_refused_with_every_field_named() -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_policy(
            "acme",
            {
                "quotas": {"requests_per_minute": -1},
                "network": {"allow_private": ["nonsense"]},
                "colour": "red",
            },
        )
    message = info.value.message
    assert (
        "quotas.requests_per_minute" in message and "network.allow_private" in message and "colour" in message
    )


@pytest.mark.parametrize(
    ("policy", "host", "address", "public", "allowed"),
    [
        ({}, "example.com", "93.184.216.34", True, True),
        ({}, "localhost", "127.0.0.1", False, False),
        ({"allow_private": ["10.1.0.0/16"]}, "api.internal", "10.1.2.3", False, True),
        ({"allow_private": ["10.1.0.0/16"]}, "db.internal", "10.2.0.1", False, False),
        ({"allowed_hosts": ["*.example.com"]}, "api.example.com", "93.184.216.34", True, True),
        ({"allowed_hosts": ["*.example.com"]}, "evil.test", "93.184.216.35", True, False),
        ({"allowed_hosts": ["93.184.216.0/24"]}, "whatever", "93.184.216.7", True, True),
        # A listed host name never opens a private address: both rules must hold.
        ({"allowed_hosts": ["*.example.com"]}, "rebind.example.com", "169.254.169.254", False, False),
    ],
)
def test_network_policy(
    policy: dict[str, list[str]], host: str, address: str, public: bool, allowed: bool
) -> None:
    assert parse_policy("t", {"network": policy}).network.allows(host, address, public=public) is allowed


def test_roles_grant_permissions() -> None:
    assert permitted(("viewer",), "tasks.read") and not permitted(("viewer",), "tasks.write")
    assert permitted(("operator",), "tasks.write") and not permitted(("operator",), "audit.read")
    assert permitted(("viewer", "admin"), "apikeys.manage")
    assert not permitted(("root",), "tasks.read") and not permitted((), "tasks.read")


def test_config_file_and_closed_directories(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  acme:\n    models: [gpt-4-mini]\n  old:\n    disabled: true\n")
    tenants, default = load_file(path)
    assert default is None and set(tenants) == {"acme", "old"}
    directory = TenantDirectory(None, "ns", configured=tenants, default=default, closed=True)
    assert TenantDirectory(None, "ns", configured=tenants).policy("stranger") == TenantPolicy()
    assert directory.policy("acme").models == ("gpt-4-mini",)
    with pytest.raises(PermissionDeniedError, match="'stranger' is not registered"):
        directory.policy("stranger")
    with pytest.raises(PermissionDeniedError, match="'old' is disabled"):
        directory.policy("old")
    path.write_text("tenants:\n  acme:\n    quotas: {burst: -5}\n")
    with pytest.raises(InvalidInputError, match=r"quotas\.burst"):
        load_file(path)
