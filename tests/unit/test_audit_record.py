"""An audit record's text: the mac spliced into the canonical encoding equals encoding the record with it."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.audit import AuditEvent, _with_mac, canonical

DETAILS: list[dict[str, Any]] = [
    {},
    {"outcome": "nested", "x": {"outcome": 1, "mac": "not ours"}},
    {"text": '","outcome":"fake', "emoji": "ünï 😀", "n": [1, 2.5, None, True]},
    {"zzz": "after everything", "aaa": "before everything"},
]


@pytest.mark.parametrize("details", DETAILS)
@pytest.mark.parametrize("cost", [None, 0.00012])
def test_splicing_the_mac_matches_encoding_the_record_again(
    details: dict[str, Any], cost: float | None
) -> None:
    event = AuditEvent(
        tenant="acme",
        actor="user:1",
        action="tasks.submit",
        resource='task:"quoted"',
        outcome="ok",
        service="gateway",
        cost_usd=cost,
        details=details,
        trace_id="ab" * 16,
    )
    record = {**event.body(), "seq": 7, "prev": "c" * 64}
    mac = "d" * 64
    assert _with_mac(canonical(record), mac) == canonical({**record, "mac": mac})
