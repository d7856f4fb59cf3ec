"""Errors across process boundaries: every code comes back as itself, unknown ones keep code and retry verdict."""

from __future__ import annotations

from services.common import errors
from services.common.errors import OpenClawError, ResourceExhaustedError, UnavailableError, from_dict


def test_an_error_defined_in_any_module_round_trips_with_its_class() -> None:
    from services.gateway.ratelimit import Decision, RateLimitedError

    sent = RateLimitedError(Decision(False, 10, 0, 5.0, 2.0), "tenant:acme")
    back = from_dict(sent.to_dict())
    assert type(back) is RateLimitedError and back.code == "rate_limited" and back.http_status == 429
    assert back.retryable and back.details == sent.details and back.message == sent.message


def test_an_unknown_code_keeps_its_name_and_retry_verdict() -> None:
    back = from_dict({"code": "brand_new_thing", "message": "m", "retryable": True})
    assert back.code == "brand_new_thing" and back.retryable and isinstance(back, UnavailableError)
    final = from_dict({"code": "another_new", "message": "m", "retryable": False})
    assert final.code == "another_new" and not final.retryable and type(final).__mro__[1] is OpenClawError


def test_hostile_codes_fall_back_without_growing_anything() -> None:
    before = len(errors._REMOTE)
    back = from_dict({"code": "X" * 500, "message": "m", "retryable": False})
    assert type(back) is OpenClawError and len(errors._REMOTE) == before
    assert type(from_dict({"code": "resource_exhausted", "message": "m"})) is ResourceExhaustedError
