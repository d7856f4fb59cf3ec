"""Bearer-token authentication: JWTs naming the tenant, verified strictly; dev tokens minted for the CLI.

Keys are either one shared secret (HS256/384/512) or a JWKS key set (RS/PS/ES/EdDSA), never both, so a public
key can never be used as an HMAC secret (the HS/RS confusion attack); the accepted algorithms are an explicit
allow-list checked against the token's header before any key is chosen. The tenant always comes from the
verified ``tenant`` claim, never from a request body.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from services.common.errors import InvalidInputError, UnauthenticatedError
from services.common.taskstore import check_tenant
from services.gateway.keys import ASYMMETRIC, JwksKeys, KeyLookupError
from services.gateway.metrics import AUTH_FAILURES

ALGORITHM = "HS256"
SYMMETRIC = frozenset({"HS256", "HS384", "HS512"})
DEFAULT_ISSUER = "openclaw"
DEFAULT_AUDIENCE = "openclaw-api"
_REQUIRED_CLAIMS = ["exp", "iss", "aud"]
_OPTIONS: dict[str, Any] = {"require": _REQUIRED_CLAIMS, "enforce_minimum_key_length": True}

# PyJWT's exceptions, most specific first, mapped to (metric reason, what the caller is told).
_REASONS: tuple[tuple[type[jwt.InvalidTokenError], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "the token has expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "the token is not yet valid"),
    (jwt.InvalidAudienceError, "invalid_audience", "the token's audience is not accepted"),
    (jwt.InvalidIssuerError, "invalid_issuer", "the token's issuer is not accepted"),
    (jwt.InvalidAlgorithmError, "invalid_algorithm", "the token's algorithm is not accepted"),
    (jwt.InvalidSignatureError, "invalid_signature", "the token's signature does not verify"),
    (jwt.DecodeError, "malformed", "the token is not a well-formed JWT"),
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant whose data they may touch, their subject and roles."""

    tenant: str
    subject: str = ""
    roles: tuple[str, ...] = ()


class AuthError(UnauthenticatedError):
    """A request without a valid token; ``reason`` is the metric label, the message names the problem."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, reason=reason)
        self.reason = reason

    def www_authenticate(self, realm: str = "openclaw") -> str:
        """The RFC 6750 challenge; a request that sent no credentials gets no error code (§3.1)."""
        if self.reason == "missing":
            return f'Bearer realm="{realm}"'
        description = self.message.replace("\\", "\\\\").replace('"', "'")
        return f'Bearer realm="{realm}", error="invalid_token", error_description="{description}"'


class TokenVerifier:
    """Verifies bearer tokens: allowed algorithms only, exp required, nbf, iss and aud checked, a valid tenant.

    Verified tokens are remembered until they expire (clients reuse one token for many requests, and
    decoding is a sizeable share of a request's CPU); the cache is bounded and holds no refused token.
    """

    def __init__(
        self,
        secret: str | None = None,
        *,
        jwks: JwksKeys | None = None,
        algorithms: Sequence[str] = (ALGORITHM,),
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
        leeway_s: float = 30.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._algorithms = check_algorithms(algorithms, has_secret=bool(secret), has_jwks=jwks is not None)
        self._secret = secret or ""
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_s
        self._jwt = jwt.PyJWT(options=_OPTIONS)  # type: ignore[arg-type]
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._cache_size = cache_size
        self._clock = clock

    def verify(self, token: str) -> Principal:
        """The principal a token names; AuthError saying why it is refused otherwise."""
        cached = self._cache.get(token)
        if cached is not None:
            principal, expires = cached
            if self._clock() < expires:
                return principal
            del self._cache[token]
            raise AuthError("expired", "the token has expired")
        principal, exp = self._decode(token)
        expires = exp + self._leeway
        if self._cache_size and self._clock() < expires:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()  # crude but bounded; a full cache means unusually many distinct tokens
            self._cache[token] = (principal, expires)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise _auth_error(exc) from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            allowed = ", ".join(sorted(self._algorithms))
            raise AuthError(
                "invalid_algorithm", f"the token's algorithm {alg!r} is not accepted (allowed: {allowed})"
            )
        key: Any = self._secret
        if alg in ASYMMETRIC:
            assert self._jwks is not None  # check_algorithms guarantees it
            kid = header.get("kid")
            try:
                key = self._jwks.key(kid if isinstance(kid, str) else None, alg)
            except KeyLookupError as exc:
                raise AuthError(exc.reason, exc.message) from exc
        try:
            claims: dict[str, Any] = self._jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
            )
        except jwt.InvalidTokenError as exc:
            raise _auth_error(exc) from exc
        tenant = claims.get("tenant")
        if not isinstance(tenant, str) or not tenant:
            raise AuthError("missing_claim", "the token has no tenant claim")
        try:
            check_tenant(tenant)
        except InvalidInputError as exc:
            raise AuthError(
                "invalid_tenant", f"the token's tenant claim is not a valid tenant id: {tenant!r}"
            ) from exc
        subject = claims.get("sub")
        roles = claims.get("roles") or ()
        principal = Principal(
            tenant=tenant,
            subject=subject if isinstance(subject, str) else "",
            roles=tuple(str(r) for r in roles) if isinstance(roles, list | tuple) else (),
        )
        return principal, float(claims["exp"])

    def authenticate(self, authorization: str | None) -> Principal:
        """Verify an ``Authorization`` header value; every refusal is counted by reason."""
        try:
            return self.verify(bearer_token(authorization))
        except AuthError as exc:
            AUTH_FAILURES.labels(exc.reason).inc()
            raise


def bearer_token(authorization: str | None) -> str:
    """The token of a ``Bearer`` authorization value."""
    if not authorization or not authorization.strip():
        raise AuthError("missing", "a bearer token is required (Authorization: Bearer <token>)")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("malformed", "the Authorization header must be 'Bearer <token>'")
    return token.strip()


def mint_token(
    secret: str,
    *,
    tenant: str,
    subject: str = "dev",
    ttl_s: int = 3600,
    issuer: str = DEFAULT_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
    roles: Iterable[str] = (),
) -> str:
    """A signed HS256 token for the tenant, valid from now for ttl_s seconds (development and tests)."""
    check_tenant(tenant)
    if ttl_s <= 0:
        raise InvalidInputError(f"ttl_s must be positive, got {ttl_s}")
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "tenant": tenant,
        "roles": list(roles),
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
        "jti": uuid.uuid4().hex,
    }
    return jwt.PyJWT(options=_OPTIONS).encode(claims, secret, algorithm=ALGORITHM)  # type: ignore[arg-type]


def check_algorithms(algorithms: Sequence[str], *, has_secret: bool, has_jwks: bool) -> frozenset[str]:
    """The allow-list, refusing 'none', unknown names, and shared-secret and public-key algorithms together."""
    allowed = frozenset(algorithms)
    unknown = sorted(allowed - SYMMETRIC - ASYMMETRIC)
    if not allowed or unknown:
        known = ", ".join(sorted(SYMMETRIC | ASYMMETRIC))
        raise ValueError(f"jwt_algorithms: {unknown or 'empty'} not allowed; choose from {known}")
    if allowed & SYMMETRIC and allowed & ASYMMETRIC:
        raise ValueError(
            "jwt_algorithms: HS* and public-key algorithms cannot be mixed (algorithm confusion)"
        )
    if allowed & SYMMETRIC and not has_secret:
        raise ValueError("jwt_algorithms: HS* algorithms need a shared secret (OPENCLAW_JWT_SECRET)")
    if allowed & ASYMMETRIC and not has_jwks:
        raise ValueError("jwt_algorithms: public-key algorithms need a key set (OPENCLAW_JWKS_URL or _FILE)")
    return allowed


def _auth_error(exc: jwt.InvalidTokenError) -> AuthError:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return AuthError("missing_claim", f"the token is missing the required {exc.claim!r} claim")
    for kind, reason, message in _REASONS:
        if isinstance(exc, kind):
            return AuthError(reason, message)
    return AuthError("invalid", f"the token is not valid: {exc}")
