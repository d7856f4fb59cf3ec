"""Public-key tokens from a JWKS key set: each family verifies, confusion and forgery are refused, keys rotate."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from services.gateway.auth import AuthError, TokenVerifier
from services.gateway.keys import JwksKeys, parse_jwks

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def jwk(private: Any, kid: str, **extra: Any) -> dict[str, Any]:
    if isinstance(private, rsa.RSAPrivateKey):
        public = RSAAlgorithm.to_jwk(private.public_key())
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        public = ECAlgorithm.to_jwk(private.public_key())
    else:
        public = OKPAlgorithm.to_jwk(private.public_key())
    return {**json.loads(public), "kid": kid, "use": "sig", **extra}


def document(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


class Source:
    """A JWKS document the test can swap, served through the fetch hook (the integration test uses HTTP)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.fetches = 0

    async def __call__(self, url: str) -> bytes:
        self.fetches += 1
        return self.body


def token(private: Any, alg: str, kid: str | None, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": "openclaw",
        "aud": "openclaw-api",
        "tenant": "acme",
        "sub": "bob",
        "exp": now + 600,
        **claims,
    }
    return jwt.encode(body, private, algorithm=alg, headers={"kid": kid} if kid else None)


async def verifier_for(source: Source, algorithms: tuple[str, ...]) -> tuple[TokenVerifier, JwksKeys]:
    keys = JwksKeys("https://idp.example/jwks", fetch=source, min_refresh_s=0)
    await keys.refresh()
    return TokenVerifier(jwks=keys, algorithms=algorithms, leeway_s=0), keys


def refused(verifier: TokenVerifier, tok: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        verifier.verify(tok)
    return info.value


@pytest.mark.parametrize(
    ("private", "alg"), [(RSA_KEY, "RS256"), (RSA_KEY, "PS256"), (EC_KEY, "ES256"), (ED_KEY, "EdDSA")]
)
async def test_each_key_family_verifies_its_tokens(private: Any, alg: str) -> None:
    source = Source(document(jwk(private, "k1"), jwk(RSA_OTHER, "k2")))
    verifier, _ = await verifier_for(source, ("RS256", "PS256", "ES256", "EdDSA"))
    principal = verifier.verify(token(private, alg, "k1"))
    assert (principal.tenant, principal.subject) == ("acme", "bob")


async def test_forged_and_confused_tokens_are_refused() -> None:
    source = Source(document(jwk(RSA_KEY, "k1")))
    verifier, _ = await verifier_for(source, ("RS256",))
    # Signed by another key under a known kid: the signature does not verify.
    assert refused(verifier, token(RSA_OTHER, "RS256", "k1")).reason == "invalid_signature"
    # HS/RS confusion: HMAC over the token with the public key's PEM as the "secret".
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = _hs256_with_raw_key(pem)
    err = refused(verifier, forged)
    assert err.reason == "invalid_algorithm" and "'HS256' is not accepted" in err.message
    # alg: none
    unsigned = jwt.encode({"tenant": "acme", "iss": "openclaw", "aud": "openclaw-api"}, "", algorithm="none")
    assert refused(verifier, unsigned).reason == "invalid_algorithm"
    # A key of one family never verifies another's algorithm, even when that algorithm is allowed.
    ec_source = Source(document(jwk(EC_KEY, "e1")))
    mixed, _ = await verifier_for(ec_source, ("RS256", "ES256"))
    assert refused(mixed, token(RSA_KEY, "RS256", "e1")).reason == "invalid_algorithm"


def _hs256_with_raw_key(pem: bytes) -> str:
    """What an attacker sends: HS256 over the header and claims, keyed by the public PEM (PyJWT refuses to)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    claims = {"iss": "openclaw", "aud": "openclaw-api", "tenant": "acme", "exp": int(time.time()) + 60}
    payload = b64(json.dumps(claims).encode())
    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


async def test_claims_are_checked_for_public_key_tokens() -> None:
    verifier, _ = await verifier_for(Source(document(jwk(RSA_KEY, "k1"))), ("RS256",))
    now = int(time.time())
    assert refused(verifier, token(RSA_KEY, "RS256", "k1", exp=now - 5)).reason == "expired"
    assert refused(verifier, token(RSA_KEY, "RS256", "k1", nbf=now + 300)).reason == "not_yet_valid"
    assert refused(verifier, token(RSA_KEY, "RS256", "k1", aud="someone-else")).reason == "invalid_audience"
    assert refused(verifier, token(RSA_KEY, "RS256", "k1", iss="evil")).reason == "invalid_issuer"


async def test_an_unknown_kid_is_refused_then_accepted_after_the_rotation_is_fetched() -> None:
    source = Source(document(jwk(RSA_KEY, "old")))
    verifier, keys = await verifier_for(source, ("RS256",))
    source.body = document(jwk(RSA_KEY, "old"), jwk(RSA_OTHER, "new"))  # the IdP publishes a new key
    fresh = token(RSA_OTHER, "RS256", "new")
    err = refused(verifier, fresh)
    assert err.reason == "unknown_key" and "'new'" in err.message
    await keys.refresh()
    assert verifier.verify(fresh).tenant == "acme"
    assert keys.key_ids == {"old", "new"}


async def test_a_token_without_kid_needs_a_single_candidate_key() -> None:
    verifier, _ = await verifier_for(Source(document(jwk(RSA_KEY, "only"))), ("RS256",))
    assert verifier.verify(token(RSA_KEY, "RS256", None)).tenant == "acme"
    two, _ = await verifier_for(Source(document(jwk(RSA_KEY, "a"), jwk(RSA_OTHER, "b"))), ("RS256",))
    assert refused(two, token(RSA_KEY, "RS256", None)).reason == "unknown_key"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "not JSON"),
        (b'{"keys": []}', "non-empty 'keys'"),
        (json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).encode(), "no RSA, EC or OKP"),
        (
            json.dumps({"keys": [{**json.loads(RSAAlgorithm.to_jwk(RSA_KEY)), "kid": "p"}]}).encode(),
            "contains a private key",
        ),
        (json.dumps({"keys": [{"kty": "RSA", "kid": "x", "n": "AQAB"}]}).encode(), "not a usable key"),
    ],
)
def test_a_bad_key_set_is_refused_whole(body: bytes, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_jwks(body, "test")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"secret": "s" * 40, "algorithms": ("HS256", "RS256"), "jwks": True}, "cannot be mixed"),
        ({"secret": "s" * 40, "algorithms": ("none",)}, "not allowed"),
        ({"secret": "s" * 40, "algorithms": ()}, "not allowed"),
        ({"algorithms": ("HS256",)}, "need a shared secret"),
        ({"secret": "s" * 40, "algorithms": ("RS256",)}, "need a key set"),
    ],
)
def test_verifier_configuration_mistakes_stop_start_up(kwargs: dict[str, Any], fragment: str) -> None:
    if kwargs.pop("jwks", False):
        kwargs["jwks"] = JwksKeys("unused")
    with pytest.raises(ValueError, match=fragment):
        TokenVerifier(**kwargs)
