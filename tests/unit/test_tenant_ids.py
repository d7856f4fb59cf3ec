"""Tenant ids can never collide with deployment-wide Redis keys (``{ns}:<word>:...``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.common.errors import InvalidInputError
from services.common.taskstore import RESERVED_TENANTS, check_tenant

ROOT = Path(__file__).resolve().parents[2]
GLOBAL_PREFIX = re.compile(r"(?:namespace|_ns|\bns|_prefix)\}:([a-z_]+)[:\"']")


def test_every_deployment_wide_key_prefix_is_a_reserved_tenant_id() -> None:
    words: set[str] = set()
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("openclaw/*.py")]:
        words.update(GLOBAL_PREFIX.findall(path.read_text()))
    missing = sorted(words - RESERVED_TENANTS)
    assert words and not missing, f"add these to RESERVED_TENANTS: {missing}"


@pytest.mark.parametrize("tenant", ["audit", "KV", "quota", "tenants"])
def test_reserved_words_are_refused(tenant: str) -> None:
    with pytest.raises(InvalidInputError, match="is reserved"):
        check_tenant(tenant)


def test_ordinary_ids_pass() -> None:
    assert check_tenant("acme-corp_1") == "acme-corp_1"
