"""Identifiers and secrets: UUIDs (v4, v5, v7), secure random bytes, numbers, choices and tokens, and JWT
inspection. Randomness always comes from ``secrets`` (the operating system's CSPRNG)."""

from __future__ import annotations

import base64
import secrets
import string
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, model_validator

from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from services.executor.ops._text_params import json_kind, text_input
from services.executor.ops.base import Params, input_or_prev, operation

MAX_COUNT = 1000
_NAMESPACES = {
    "dns": uuid.NAMESPACE_DNS,
    "url": uuid.NAMESPACE_URL,
    "oid": uuid.NAMESPACE_OID,
    "x500": uuid.NAMESPACE_X500,
}
_RANDOM = secrets.SystemRandom()


class _V7Clock:
    """UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then a 12-bit counter seeded at random each millisecond
    (method 1 of section 6.2), then 62 random bits; monotonic within this process."""

    def __init__(self) -> None:
        self.last_ms = 0
        self.seq = 0

    def next(self) -> uuid.UUID:
        ms = time.time_ns() // 1_000_000
        if ms > self.last_ms:
            self.last_ms, self.seq = ms, secrets.randbits(11)  # headroom: 2048+ more in this millisecond
        else:
            self.seq += 1
            if self.seq > 0xFFF:  # counter spent: borrow the next millisecond, as the RFC allows
                self.last_ms, self.seq = self.last_ms + 1, secrets.randbits(11)
        value = (
            (self.last_ms & (1 << 48) - 1) << 80
            | 0x7 << 76
            | self.seq << 64
            | 0b10 << 62
            | secrets.randbits(62)
        )
        return uuid.UUID(int=value)


_V7 = _V7Clock()


def uuid7() -> uuid.UUID:
    """A new time-ordered UUID version 7."""
    return _V7.next()


class UuidParams(Params):
    version: Literal[4, 5, 7] = Field(
        4,
        description="4: random; 5: derived from namespace and name (the same inputs give the same UUID); "
        "7: time-ordered (sorts by creation time, good as a database key).",
    )
    namespace: str = Field(
        "url", max_length=100, description="Version 5: dns, url, oid, x500, or a UUID of your own."
    )
    name: str | None = Field(
        None, max_length=10_000, description="Version 5: the name to derive the UUID from."
    )
    count: int | None = Field(
        None, ge=1, le=MAX_COUNT, description="Make a list of this many; one string when omitted."
    )

    @model_validator(mode="after")
    def _v5_needs_name(self) -> UuidParams:
        if self.version == 5 and self.name is None:
            raise ValueError("name: required for version 5")
        return self


def _namespace(value: str) -> uuid.UUID:
    if value.lower() in _NAMESPACES:
        return _NAMESPACES[value.lower()]
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInputError(
            f"namespace: {value!r} is not dns, url, oid, x500 or a UUID", param="namespace"
        ) from None


@operation("uuid_generate", category="encoding", params=UuidParams)
async def uuid_generate(p: UuidParams, ctx: OpContext) -> str | list[str]:
    """Make a UUID (version 4 random, 5 name-based, or 7 time-ordered) as a string, or a list of `count`."""
    if p.version == 5:
        assert p.name is not None
        one = str(uuid.uuid5(_namespace(p.namespace), p.name))
        return one if p.count is None else [one] * p.count
    make = uuid.uuid4 if p.version == 4 else uuid7
    if p.count is None:
        return str(make())
    return [str(make()) for _ in range(p.count)]


class UuidParseParams(Params):
    value: str | None = Field(
        None, max_length=100, description="The UUID; the previous step's output when omitted."
    )


def _uuid_time(u: uuid.UUID) -> str | None:
    if u.version == 7:
        seconds = (u.int >> 80) / 1000
    elif u.version in (1, 6):
        seconds = (u.time - 0x01B21DD213814000) / 1e7  # 100 ns ticks since 1582-10-15
    else:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


@operation("uuid_parse", category="encoding", params=UuidParseParams)
async def uuid_parse(p: UuidParseParams, ctx: OpContext) -> dict[str, Any]:
    """Check and inspect a UUID (any common spelling): canonical form, version, variant and, for v1/v6/v7, its time."""
    value = text_input(p, ctx, "value")
    try:
        u = uuid.UUID(value.strip())
    except ValueError:
        raise InvalidInputError(f"value: {value[:100]!r} is not a UUID", param="value") from None
    return {
        "uuid": str(u),
        "version": u.version,
        "variant": u.variant,
        "hex": u.hex,
        "urn": u.urn,
        "time": _uuid_time(u),
    }


class RandomBytesParams(Params):
    length: int = Field(32, ge=1, le=65_536, description="How many bytes.")
    output: Literal["base64", "hex"] = Field("base64", description="Write the bytes as base64 or hex.")


@operation("random_bytes", category="encoding", params=RandomBytesParams)
async def random_bytes(p: RandomBytesParams, ctx: OpContext) -> str:
    """Cryptographically secure random bytes, as base64 (or hex) text."""
    data = secrets.token_bytes(p.length)
    return base64.b64encode(data).decode("ascii") if p.output == "base64" else data.hex()


_INT = 2**63


class RandomIntParams(Params):
    min: int = Field(0, ge=-_INT, le=_INT, description="The smallest possible value.")
    max: int = Field(ge=-_INT, le=_INT, description="The largest possible value (inclusive).")
    count: int | None = Field(
        None, ge=1, le=MAX_COUNT, description="Make a list of this many; one number when omitted."
    )

    @model_validator(mode="after")
    def _ordered(self) -> RandomIntParams:
        if self.max < self.min:
            raise ValueError(f"max: must not be below min ({self.min})")
        return self


@operation("random_int", category="encoding", params=RandomIntParams)
async def random_int(p: RandomIntParams, ctx: OpContext) -> int | list[int]:
    """A cryptographically secure random integer from min to max inclusive (or a list of `count`)."""
    span = p.max - p.min + 1
    if p.count is None:
        return p.min + secrets.randbelow(span)
    return [p.min + secrets.randbelow(span) for _ in range(p.count)]


class RandomChoiceParams(Params):
    items: list[Any] | None = Field(
        None, max_length=100_000, description="What to choose from; the previous step's output when omitted."
    )
    count: int | None = Field(
        None, ge=1, le=100_000, description="Choose this many (a list); one item when omitted."
    )
    unique: bool = Field(True, description="With count: never choose the same position twice.")


@operation("random_choice", category="encoding", params=RandomChoiceParams)
async def random_choice(p: RandomChoiceParams, ctx: OpContext) -> Any:
    """Pick one item of a list at random (securely), or `count` items, distinct by default."""
    items = input_or_prev(p, "items", ctx)
    if not isinstance(items, list):
        raise InvalidInputError(f"items: must be a list, not {json_kind(items)}", param="items")
    if not items:
        raise InvalidInputError("items: is empty; there is nothing to choose", param="items")
    if p.count is None:
        return secrets.choice(items)
    if p.unique:
        if p.count > len(items):
            raise InvalidInputError(
                f"count: {p.count} distinct items asked of a list of {len(items)}", param="count"
            )
        return _RANDOM.sample(items, p.count)
    return [secrets.choice(items) for _ in range(p.count)]


_ALPHABETS = {
    "urlsafe": string.ascii_letters + string.digits + "-_",
    "hex": "0123456789abcdef",
    "alphanumeric": string.ascii_letters + string.digits,
    "digits": string.digits,
}


class RandomTokenParams(Params):
    length: int = Field(32, ge=8, le=1024, description="How many characters.")
    alphabet: Literal["urlsafe", "hex", "alphanumeric", "digits"] = Field(
        "urlsafe", description="urlsafe (A–Z a–z 0–9 - _), hex, alphanumeric, or digits (one-time codes)."
    )


@operation("random_token", category="encoding", params=RandomTokenParams)
async def random_token(p: RandomTokenParams, ctx: OpContext) -> str:
    """A cryptographically secure random token (API keys, nonces, one-time codes) of the given length."""
    alphabet = _ALPHABETS[p.alphabet]
    return "".join(secrets.choice(alphabet) for _ in range(p.length))


class JwtDecodeParams(Params):
    token: str | None = Field(
        None,
        max_length=65_536,
        description="The JWT (a leading `Bearer ` is fine); the previous output when omitted.",
    )


def _timestamp(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")
        except (OverflowError, OSError, ValueError):
            return None
    return None


@operation("jwt_decode", category="encoding", params=JwtDecodeParams)
async def jwt_decode(p: JwtDecodeParams, ctx: OpContext) -> dict[str, Any]:
    """Read a JWT's header and claims WITHOUT verifying its signature (for inspection only, never for trust)."""
    import jwt  # imported when used: with its crypto backends it takes a while to load

    token = text_input(p, ctx, "token").strip().removeprefix("Bearer ").strip()
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise InvalidInputError(f"token: not a readable JWT: {exc}", param="token") from None
    expires = claims.get("exp")
    expired = (
        expires < time.time() if isinstance(expires, int | float) and not isinstance(expires, bool) else None
    )
    return {
        "header": header,
        "claims": claims,
        "verified": False,
        "issued_at": _timestamp(claims, "iat"),
        "expires_at": _timestamp(claims, "exp"),
        "expired": expired,
    }


OPERATIONS = (
    uuid_generate,
    uuid_parse,
    random_bytes,
    random_int,
    random_choice,
    random_token,
    jwt_decode,
)
