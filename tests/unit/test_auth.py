"""Bearer-token verification: what is accepted, and each way a token is refused, with the reason named."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest

from services.common.errors import InvalidInputError
from services.gateway.auth import AuthError, TokenVerifier, bearer_token, mint_token
from services.gateway.metrics import AUTH_FAILURES

SECRET = "unit-test-secret-0123456789abcdef-0123456789"
OTHER_SECRET = "another-secret-0123456789abcdef-0123456789ab"


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier(SECRET, issuer="openclaw", audience="openclaw-api", leeway_s=0)


def _token(secret: str = SECRET, **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "openclaw",
        "aud": "openclaw-api",
        "sub": "alice",
        "tenant": "acme",
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, algorithm="HS256")


def _refused(verifier: TokenVerifier, token: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    return info.value


def test_minted_token_verifies_to_its_tenant_subject_and_roles(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, tenant="acme", subject="bob", roles=["operator"])
    principal = verifier.verify(token)
    assert (principal.tenant, principal.subject, principal.roles) == ("acme", "bob", ("operator",))


def test_hand_made_valid_token_is_accepted(verifier: TokenVerifier) -> None:
    assert verifier.verify(_token()).tenant == "acme"


def test_expired_token_is_refused(verifier: TokenVerifier) -> None:
    err = _refused(verifier, _token(exp=int(time.time()) - 10))
    assert err.reason == "expired"
    assert "expired" in err.message


def test_not_yet_valid_token_is_refused(verifier: TokenVerifier) -> None:
    err = _refused(verifier, _token(nbf=int(time.time()) + 300))
    assert err.reason == "not_yet_valid"


def test_wrong_audience_is_refused(verifier: TokenVerifier) -> None:
    assert _refused(verifier, _token(aud="someone-else")).reason == "invalid_audience"


def test_wrong_issuer_is_refused(verifier: TokenVerifier) -> None:
    assert _refused(verifier, _token(iss="evil")).reason == "invalid_issuer"


def test_token_without_exp_is_refused(verifier: TokenVerifier) -> None:
    err = _refused(verifier, _token(exp=None))
    assert err.reason == "missing_claim"
    assert "'exp'" in err.message


def test_alg_none_is_refused(verifier: TokenVerifier) -> None:
    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"iss": "openclaw", "aud": "openclaw-api", "tenant": "acme", "exp": now + 600}
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    assert _refused(verifier, unsigned).reason == "invalid_algorithm"


def test_other_hmac_algorithm_is_refused(verifier: TokenVerifier) -> None:
    now = int(time.time())
    claims = {"iss": "openclaw", "aud": "openclaw-api", "tenant": "acme", "exp": now + 600}
    token = jwt.encode(claims, SECRET * 2, algorithm="HS512")
    assert _refused(verifier, token).reason == "invalid_algorithm"


def test_wrong_secret_is_refused(verifier: TokenVerifier) -> None:
    assert _refused(verifier, _token(secret=OTHER_SECRET)).reason == "invalid_signature"


def test_missing_tenant_claim_is_refused(verifier: TokenVerifier) -> None:
    err = _refused(verifier, _token(tenant=None))
    assert err.reason == "missing_claim"
    assert "tenant" in err.message


@pytest.mark.parametrize("tenant", ["acme:other", "../etc", "a b", "x" * 65, 42])
def test_bad_tenant_id_is_refused(verifier: TokenVerifier, tenant: Any) -> None:
    err = _refused(verifier, _token(tenant=tenant))
    assert err.reason in {"invalid_tenant", "missing_claim"}


def test_garbage_is_refused_as_malformed(verifier: TokenVerifier) -> None:
    assert _refused(verifier, "not-a-jwt").reason == "malformed"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("   ", "missing"),
        ("Basic abc", "malformed"),
        ("Bearer", "malformed"),
        ("Bearer   ", "malformed"),
    ],
)
def test_authorization_header_shape(header: str | None, reason: str) -> None:
    with pytest.raises(AuthError) as info:
        bearer_token(header)
    assert info.value.reason == reason


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer abc.def.ghi") == "abc.def.ghi"


def test_authenticate_counts_failures_by_reason(verifier: TokenVerifier) -> None:
    counter = AUTH_FAILURES.labels("expired")
    before = counter._value.get()
    with pytest.raises(AuthError):
        verifier.authenticate(f"Bearer {_token(exp=int(time.time()) - 10)}")
    assert counter._value.get() == before + 1


def test_challenge_names_the_problem() -> None:
    challenge = AuthError("expired", 'the token has "expired"').www_authenticate()
    assert challenge.startswith('Bearer realm="openclaw", error="invalid_token", error_description="')
    assert "expired" in challenge
    assert challenge.count('"') == 6
    assert AuthError("missing", "no token").www_authenticate() == 'Bearer realm="openclaw"'


def test_mint_token_rejects_a_bad_tenant() -> None:
    with pytest.raises(InvalidInputError):
        mint_token(SECRET, tenant="no/slashes")


def test_cached_token_is_refused_once_it_expires() -> None:
    now = [time.time()]
    verifier = TokenVerifier(SECRET, leeway_s=5, clock=lambda: now[0])
    token = mint_token(SECRET, tenant="acme", ttl_s=60)
    assert verifier.verify(token).tenant == "acme"
    assert verifier.verify(token).tenant == "acme"  # from the cache
    now[0] += 64  # inside the leeway
    assert verifier.verify(token).tenant == "acme"
    now[0] += 2
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    assert info.value.reason == "expired"


def test_cache_is_bounded_and_never_holds_refused_tokens() -> None:
    verifier = TokenVerifier(SECRET, cache_size=2)
    tokens = [mint_token(SECRET, tenant=f"t{i}") for i in range(5)]
    assert [verifier.verify(t).tenant for t in tokens] == [f"t{i}" for i in range(5)]
    assert len(verifier._cache) <= 2
    bad = _token(secret=OTHER_SECRET)
    for _ in range(2):
        with pytest.raises(AuthError):
            verifier.verify(bad)
    assert bad not in verifier._cache
