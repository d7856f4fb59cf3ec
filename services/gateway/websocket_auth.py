"""The credentials a live WebSocket connection runs on, and when they lapse (a JWT's exp, a revoked API key).

HTTP checks credentials on every request; a WebSocket checks them when it opens and then for as long as it lives:
a JWT is good until its ``exp`` (plus the verifier's clock-skew leeway, the moment the gateway would refuse it on
HTTP), an API key until a periodic re-check finds it revoked. The connection (websocket_api.py) closes with
``CLOSE_CREDENTIALS`` when they lapse, unless the client re-authenticated first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from services.gateway.access import Credentials, Gate
from services.gateway.apikeys import looks_like_api_key
from services.gateway.auth import Principal, bearer_token

# Private-use close codes (RFC 6455 §7.4.2), mirroring HTTP 401 and 403.
CLOSE_CREDENTIALS = 4401  # the JWT expired, the API key was revoked, or a re-auth token was refused
CLOSE_TENANT = 4403  # a re-auth token named another tenant


@dataclass(frozen=True, slots=True)
class Grant:
    """A verified credential on a connection: who it names and, for a JWT, when it stops being accepted."""

    principal: Principal
    credentials: Credentials
    expires_at: float | None  # Unix seconds: the JWT's exp plus the leeway; None for an API key
    api_key: bool

    def expired(self, now: float | None = None) -> bool:
        """Whether the JWT is past its expiry (an API key never expires by the clock)."""
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at


async def grant(gate: Gate, credentials: Credentials, *, leeway_s: float) -> Grant:
    """Authenticate the credentials (AuthError if refused) and note how long they last."""
    principal = await gate.authenticate(credentials)
    token = _jwt_of(credentials)
    if token is None:
        return Grant(principal, credentials, None, api_key=True)
    exp = _exp(token)
    return Grant(principal, credentials, None if exp is None else exp + leeway_s, api_key=False)


def _jwt_of(credentials: Credentials) -> str | None:
    """The JWT the authenticator verified, or None when it took an API key (the same precedence it uses)."""
    if (credentials.api_key or "").strip():
        return None
    token = bearer_token(credentials.authorization)
    return None if looks_like_api_key(token) else token


def _exp(token: str) -> float | None:
    """The ``exp`` claim of a token the verifier has just accepted (so its signature is not checked again)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
