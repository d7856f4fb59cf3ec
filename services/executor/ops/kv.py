"""Redis key-value operations for workflow state, confined to the tenant's key space.

Every key a step names becomes ``<namespace>:<tenant>:kv:<key>`` in the executor's Redis: a key name is
printable, at most 256 characters and holds no glob characters, so one tenant can neither address nor match
another tenant's keys. Values are stored as JSON text (numbers stay numbers, so ``kv_incr`` and ``kv_get``
agree) and each is bounded by the largest step output the engine accepts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from services.common.encryption import TEXT_PREFIX
from services.common.errors import InvalidInputError, PayloadTooLargeError, UnavailableError
from services.common.taskstore import check_tenant
from services.executor.context import OpContext
from services.executor.ops.base import Params, input_or_prev, operation

CATEGORY = "kv"
MAX_KEY_CHARS = 256
MAX_BATCH = 1000
_GLOB = frozenset("*?[]\\")
_SCAN_ROUNDS = 50  # SCAN calls one kv_keys step may make before it hands back a cursor


def check_key(value: str) -> str:
    """A key name: printable, no surrounding spaces, no glob characters."""
    if not value.isprintable() or value != value.strip():
        raise ValueError("must be printable, without leading or trailing spaces")
    if bad := sorted(_GLOB.intersection(value)):
        raise ValueError(f"must not contain the glob characters {''.join(bad)!r}")
    return value


Key = Annotated[str, Field(min_length=1, max_length=MAX_KEY_CHARS), AfterValidator(check_key)]
KEY_DOC = "Key name inside the tenant's key space (printable, no * ? [ ] or backslash)."
TTL_DOC = "Seconds until the key expires; omitted: "


def _prefix(ctx: OpContext) -> str:
    return f"{ctx.services.namespace}:{check_tenant(ctx.tenant)}:kv:"


def _rkey(ctx: OpContext, key: str) -> str:
    # Params models check keys already; checked again here because a key is the tenant boundary.
    try:
        return _prefix(ctx) + check_key(key)
    except ValueError as exc:
        raise InvalidInputError(f"key: {exc}", param="key") from None


async def _seal(text: str, ctx: OpContext, key: str) -> str:
    """With master keys: the value sealed with the tenant's key and bound to this key (no swapping values)."""
    sealer = ctx.services.sealer
    return await sealer.seal_text(ctx.tenant, text, f"kv:{key}") if sealer is not None else text


async def _open(raw: str | None, ctx: OpContext, key: str) -> Any:
    if raw is not None and raw.startswith(TEXT_PREFIX):
        sealer = ctx.services.sealer
        if sealer is None:
            raise InvalidInputError(
                f"key: {key!r} holds a sealed value but no master key is configured", param="key"
            )
        raw = await sealer.open_text(ctx.tenant, raw, f"kv:{key}")
    return _decode(raw)


def _encode(value: Any, ctx: OpContext, param: str) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{param}: not storable as JSON: {exc}", param=param) from None
    limit = ctx.services.max_output_bytes
    if len(text.encode()) > limit:
        raise PayloadTooLargeError(f"{param}: the JSON value is over the limit of {limit} bytes", param=param)
    return text


def _decode(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:  # written by something other than these operations: hand back the text
        return raw


def _redis(ctx: OpContext) -> Redis:
    return ctx.services.require_redis()


async def _execute(pipe: Pipeline) -> list[Any]:
    """Run a transaction; a command's error is raised as Redis sent it (redis-py would rewrite the message)."""
    results: list[Any] = await pipe.execute(raise_on_error=False)
    for result in results:
        if isinstance(result, redis_errors.RedisError):
            raise result
    return results


async def _expire_after(ctx: OpContext, rkey: str, ttl_s: int | None) -> None:
    """Set an expiry once a write succeeded (in the same MULTI, a failed write would still get it)."""
    if ttl_s is not None:
        await _redis(ctx).expire(rkey, ttl_s)


@contextmanager
def _errors(key: str) -> Iterator[None]:
    """Redis failures as the catalogue's errors, naming the tenant's key (never the full Redis key)."""
    try:
        yield
    except redis_errors.ResponseError as exc:
        text = str(exc)
        if text.startswith("WRONGTYPE"):
            raise InvalidInputError(
                f"key: {key!r} holds another kind of value (string, list or hash) than this operation uses",
                param="key",
            ) from None
        if "not an integer" in text or "not a valid float" in text:
            raise InvalidInputError(f"key: {key!r} does not hold a number", param="key") from None
        raise InvalidInputError(f"key: Redis refused the command on {key!r}: {text}", param="key") from None
    except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
        raise UnavailableError(f"Redis is unreachable: {exc}") from exc


# -- strings --------------------------------------------------------------------------------------------


class KvGetParams(Params):
    key: Key = Field(description=KEY_DOC)
    default: Any = Field(None, description="Returned when the key does not exist.")


@operation("kv_get", category=CATEGORY, params=KvGetParams)
async def kv_get(p: KvGetParams, ctx: OpContext) -> Any:
    """Read a key's JSON value from the tenant's key-value store; returns the value, or `default` if absent."""
    with _errors(p.key):
        raw = await _redis(ctx).get(_rkey(ctx, p.key))
    return p.default if raw is None else await _open(raw, ctx, p.key)


class KvSetParams(Params):
    key: Key = Field(description=KEY_DOC)
    value: Any = Field(None, description="Any JSON value; the previous step's output when omitted.")
    ttl_s: int | None = Field(None, ge=1, le=366 * 86400, description=TTL_DOC + "no expiry.")
    when: Literal["always", "absent", "present"] = Field(
        "always", description="Write always, only if the key is absent (NX), or only if present (XX)."
    )


@operation("kv_set", category=CATEGORY, params=KvSetParams)
async def kv_set(p: KvSetParams, ctx: OpContext) -> bool:
    """Store a JSON value under a key, optionally with a TTL and only-if-absent/present; returns whether it
    was written."""
    text = await _seal(_encode(input_or_prev(p, "value", ctx), ctx, "value"), ctx, p.key)
    with _errors(p.key):
        done = await _redis(ctx).set(
            _rkey(ctx, p.key), text, ex=p.ttl_s, nx=p.when == "absent", xx=p.when == "present"
        )
    return bool(done)


class KvDeleteParams(Params):
    key: Key | Annotated[list[Key], Field(min_length=1, max_length=MAX_BATCH)] = Field(
        description="A key name, or a list of up to 1000."
    )


@operation("kv_delete", category=CATEGORY, params=KvDeleteParams)
async def kv_delete(p: KvDeleteParams, ctx: OpContext) -> int:
    """Delete one or more keys of the tenant; returns how many existed."""
    keys = [p.key] if isinstance(p.key, str) else p.key
    with _errors(keys[0]):
        return int(await _redis(ctx).delete(*(_rkey(ctx, k) for k in keys)))


class KvIncrParams(Params):
    key: Key = Field(description=KEY_DOC)
    by: int | float = Field(1, ge=-(2**53), le=2**53, description="Amount to add (negative subtracts).")
    ttl_s: int | None = Field(
        None, ge=1, le=366 * 86400, description="Expiry set when the counter is created (a fixed window)."
    )


@operation("kv_incr", category=CATEGORY, params=KvIncrParams)
async def kv_incr(p: KvIncrParams, ctx: OpContext) -> int | float:
    """Atomically add to a numeric key (a missing key counts as 0); returns the new value. Counters stay plain
    numbers in Redis even with encryption at rest (Redis does the adding)."""
    rkey = _rkey(ctx, p.key)
    with _errors(p.key):
        redis = _redis(ctx)
        value = await (redis.incrby(rkey, p.by) if isinstance(p.by, int) else redis.incrbyfloat(rkey, p.by))
        if p.ttl_s is not None:
            # NX: only a key without an expiry gets one, so the window stays fixed; run after the increment
            # succeeded (a failed one must not set an expiry), and a step cut off in between is mended by
            # the next increment.
            await redis.expire(rkey, p.ttl_s, nx=True)
    return value if isinstance(value, int) else float(value)


class KvKeyParams(Params):
    key: Key = Field(description=KEY_DOC)


@operation("kv_exists", category=CATEGORY, params=KvKeyParams)
async def kv_exists(p: KvKeyParams, ctx: OpContext) -> bool:
    """Whether a key exists in the tenant's key-value store."""
    with _errors(p.key):
        return bool(await _redis(ctx).exists(_rkey(ctx, p.key)))


class KvExpireParams(Params):
    key: Key = Field(description=KEY_DOC)
    ttl_s: int | None = Field(
        description="Seconds until the key expires; null removes its expiry.", ge=1, le=366 * 86400
    )


@operation("kv_expire", category=CATEGORY, params=KvExpireParams)
async def kv_expire(p: KvExpireParams, ctx: OpContext) -> bool:
    """Set (or with ttl_s null, remove) a key's expiry; returns whether the key exists."""
    rkey = _rkey(ctx, p.key)
    with _errors(p.key):
        if p.ttl_s is None:
            async with _redis(ctx).pipeline(transaction=True) as pipe:
                pipe.persist(rkey)
                pipe.exists(rkey)
                _, exists = await _execute(pipe)
            return bool(exists)
        return bool(await _redis(ctx).expire(rkey, p.ttl_s))


@operation("kv_ttl", category=CATEGORY, params=KvKeyParams)
async def kv_ttl(p: KvKeyParams, ctx: OpContext) -> int | None:
    """Seconds until a key expires: -1 if it never does, null if it does not exist."""
    with _errors(p.key):
        ttl = int(await _redis(ctx).ttl(_rkey(ctx, p.key)))
    return None if ttl == -2 else ttl


# -- lists ----------------------------------------------------------------------------------------------


class KvListPushParams(Params):
    key: Key = Field(description=KEY_DOC)
    values: list[Any] | None = Field(
        None,
        max_length=MAX_BATCH,
        description="Items to append (JSON values); the previous output if omitted.",
    )
    side: Literal["right", "left"] = Field("right", description="Append at the end (right) or the start.")
    max_length: int | None = Field(
        None, ge=1, le=1_000_000, description="Trim the list to its newest this many items (a capped log)."
    )
    ttl_s: int | None = Field(None, ge=1, le=366 * 86400, description=TTL_DOC + "unchanged.")


@operation("kv_list_push", category=CATEGORY, params=KvListPushParams)
async def kv_list_push(p: KvListPushParams, ctx: OpContext) -> int:
    """Push JSON items onto a list key (right or left), optionally capped to its newest items; returns the
    list's length."""
    values = input_or_prev(p, "values", ctx)
    if not isinstance(values, list) or not values:
        raise InvalidInputError("values: must be a non-empty list", param="values")
    if len(values) > MAX_BATCH:
        raise InvalidInputError(f"values: at most {MAX_BATCH} items per push", param="values")
    items = [await _seal(_encode(v, ctx, f"values[{i}]"), ctx, p.key) for i, v in enumerate(values)]
    rkey = _rkey(ctx, p.key)
    with _errors(p.key):
        async with _redis(ctx).pipeline(transaction=True) as pipe:
            if p.side == "right":
                pipe.rpush(rkey, *items)
            else:
                pipe.lpush(rkey, *items)
            if p.max_length is not None:
                # The newest items are the pushed end: keep that end.
                pipe.ltrim(rkey, *((-p.max_length, -1) if p.side == "right" else (0, p.max_length - 1)))
            result = await _execute(pipe)
        await _expire_after(ctx, rkey, p.ttl_s)
    length = int(result[0])
    return min(length, p.max_length) if p.max_length is not None else length


class KvListRangeParams(Params):
    key: Key = Field(description=KEY_DOC)
    start: int = Field(0, ge=-(2**31), le=2**31, description="First index (negative counts from the end).")
    stop: int = Field(-1, ge=-(2**31), le=2**31, description="Last index, inclusive (-1: the last item).")
    limit: int = Field(1000, ge=1, le=10_000, description="Most items returned from start.")


@operation("kv_list_range", category=CATEGORY, params=KvListRangeParams)
async def kv_list_range(p: KvListRangeParams, ctx: OpContext) -> list[Any]:
    """Read items start..stop (inclusive, negative from the end) of a list key, at most `limit`; a missing
    key is an empty list."""
    rkey = _rkey(ctx, p.key)
    redis = _redis(ctx)
    with _errors(p.key):
        length = int(await redis.llen(rkey))  # type: ignore[misc]
        start = max(p.start + length if p.start < 0 else p.start, 0)
        stop = min(p.stop + length if p.stop < 0 else p.stop, length - 1, start + p.limit - 1)
        if stop < start:
            return []
        raw = await redis.lrange(rkey, start, stop)  # type: ignore[misc]
    return [await _open(item, ctx, p.key) for item in raw]


# -- hashes ---------------------------------------------------------------------------------------------

HashField = Annotated[str, Field(min_length=1, max_length=MAX_KEY_CHARS)]


class KvHashSetParams(Params):
    key: Key = Field(description=KEY_DOC)
    fields: dict[HashField, Any] | None = Field(
        None, max_length=MAX_BATCH, description="Field names to JSON values; the previous output if omitted."
    )
    ttl_s: int | None = Field(None, ge=1, le=366 * 86400, description=TTL_DOC + "unchanged.")


@operation("kv_hash_set", category=CATEGORY, params=KvHashSetParams)
async def kv_hash_set(p: KvHashSetParams, ctx: OpContext) -> int:
    """Set fields of a hash key to JSON values; returns how many fields were new."""
    fields = input_or_prev(p, "fields", ctx)
    if not isinstance(fields, dict) or not fields:
        raise InvalidInputError("fields: must be a non-empty object of field names to values", param="fields")
    if len(fields) > MAX_BATCH or any(not isinstance(k, str) or len(k) > MAX_KEY_CHARS for k in fields):
        raise InvalidInputError(
            f"fields: at most {MAX_BATCH} fields, each name at most {MAX_KEY_CHARS} characters",
            param="fields",
        )
    mapping = {name: await _seal(_encode(v, ctx, f"fields.{name}"), ctx, p.key) for name, v in fields.items()}
    rkey = _rkey(ctx, p.key)
    with _errors(p.key):
        added = int(await _redis(ctx).hset(rkey, mapping=mapping))  # type: ignore[misc]
        await _expire_after(ctx, rkey, p.ttl_s)
    return added


class KvHashGetParams(Params):
    key: Key = Field(description=KEY_DOC)
    fields: list[HashField] | None = Field(
        None, min_length=1, max_length=MAX_BATCH, description="Fields to read; omitted: the whole hash."
    )


@operation("kv_hash_get", category=CATEGORY, params=KvHashGetParams)
async def kv_hash_get(p: KvHashGetParams, ctx: OpContext) -> dict[str, Any]:
    """Read fields of a hash key (all of them when `fields` is omitted) as an object; absent fields are left
    out."""
    rkey = _rkey(ctx, p.key)
    redis = _redis(ctx)
    with _errors(p.key):
        if p.fields is not None:
            values = await redis.hmget(rkey, p.fields)  # type: ignore[misc]
            return {
                f: await _open(v, ctx, p.key) for f, v in zip(p.fields, values, strict=True) if v is not None
            }
        size = int(await redis.hlen(rkey))  # type: ignore[misc]
        if size > MAX_BATCH:
            raise InvalidInputError(
                f"key: {p.key!r} has {size} fields; name at most {MAX_BATCH} of them in `fields`", param="key"
            )
        raw = await redis.hgetall(rkey)  # type: ignore[misc]
    return {f: await _open(v, ctx, p.key) for f, v in raw.items()}


# -- listing --------------------------------------------------------------------------------------------


def _check_pattern(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must be printable")
    return value


class KvKeysParams(Params):
    pattern: Annotated[str, AfterValidator(_check_pattern)] = Field(
        "*", min_length=1, max_length=MAX_KEY_CHARS, description="Glob over key names (* ? [abc])."
    )
    cursor: int = Field(0, ge=0, le=2**64, description="Where to continue: `cursor` from the last call.")
    limit: int = Field(100, ge=1, le=MAX_BATCH, description="Stop scanning once this many keys are found.")


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in _GLOB else c for c in text)


@operation("kv_keys", category=CATEGORY, params=KvKeysParams)
async def kv_keys(p: KvKeysParams, ctx: OpContext) -> dict[str, Any]:
    """List the tenant's key names matching a glob, a page at a time (SCAN); returns keys and the cursor to
    continue from (null when done)."""
    prefix = _prefix(ctx)
    match = _glob_escape(prefix) + p.pattern
    redis = _redis(ctx)
    found: dict[str, None] = {}  # SCAN may return a key twice; keep first-seen order
    cursor = p.cursor
    with _errors(p.pattern):
        for _ in range(_SCAN_ROUNDS):
            cursor, batch = await redis.scan(cursor, match=match, count=min(500, p.limit * 10))
            for name in batch:
                found[name[len(prefix) :]] = None
            if cursor == 0 or len(found) >= p.limit:
                break
    return {"keys": list(found), "cursor": cursor or None}


OPERATIONS = (
    kv_get,
    kv_set,
    kv_delete,
    kv_incr,
    kv_exists,
    kv_expire,
    kv_ttl,
    kv_list_push,
    kv_list_range,
    kv_hash_set,
    kv_hash_get,
    kv_keys,
)
