"""Encoding and crypto operations: round trips against known vectors, HMAC keys from scoped credential
sets with constant-time verification, UUID versions, secure randomness, JWT inspection and bad input."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from pydantic import ValidationError

from services.common.errors import InvalidInputError, PayloadTooLargeError, PermissionDeniedError
from services.executor.context import OpContext
from tests.unit.ops.harness import ctx_for, run_op

SECRET = "whsec-test-key"
CREDENTIALS = {
    "webhook": {"secret": SECRET},
    "b64key": {"signing_key": base64.b64encode(b"\x00\xffkey").decode()},
    "other_tenant": {"secret": "theirs", "tenants": "globex"},
}


@pytest.fixture
def ctx(tmp_path: Path) -> OpContext:
    return ctx_for(tmp_path, credentials=CREDENTIALS)


def prev(tmp_path: Path, value: Any) -> OpContext:
    return ctx_for(tmp_path, prev=value, has_prev=True, credentials=CREDENTIALS)


# ---- base64, base32, hex ---------------------------------------------------------------------------------------


async def test_base64_round_trip_and_variants(tmp_path: Path, ctx: OpContext) -> None:
    assert await run_op("base64_encode", {"value": "héllo?>"}, ctx) == "aMOpbGxvPz4="
    assert (
        await run_op("base64_encode", {"value": "héllo?>", "url_safe": True, "padding": False}, ctx)
        == "aMOpbGxvPz4"
    )
    assert await run_op("base64_decode", {"value": "aMOpbGxvPz4="}, ctx) == "héllo?>"
    # URL-safe alphabet and missing padding are both accepted when decoding.
    assert await run_op("base64_decode", {"value": "aMOpbGxvPz4"}, ctx) == "héllo?>"
    assert await run_op("base64_decode", {}, prev(tmp_path, "aGk=")) == "hi"
    assert await run_op("base64_decode", {"value": "_-8", "output": "hex"}, ctx) == "ffef"


async def test_binary_travels_as_base64_and_non_utf8_is_a_clear_error(ctx: OpContext) -> None:
    raw = base64.b64encode(b"\x00\xff\x10").decode()
    assert await run_op("base64_decode", {"value": raw, "output": "base64"}, ctx) == raw
    assert await run_op("hex_encode", {"value": raw, "input_encoding": "base64"}, ctx) == "00ff10"
    with pytest.raises(InvalidInputError, match=r"value: the decoded bytes are not UTF-8 text.*'base64'"):
        await run_op("base64_decode", {"value": raw}, ctx)
    with pytest.raises(InvalidInputError, match="value: not valid base64"):
        await run_op("base64_decode", {"value": "ab$c"}, ctx)
    with pytest.raises(ValidationError, match="input_encoding"):
        await run_op("base64_encode", {"value": "x", "input_encoding": "rot13"}, ctx)


async def test_encoders_refuse_a_result_over_the_output_limit(tmp_path: Path) -> None:
    small = ctx_for(tmp_path, max_output_bytes=1024)
    assert len(await run_op("base64_encode", {"value": "x" * 768}, small)) == 1024
    with pytest.raises(
        PayloadTooLargeError, match="value: the result would be 1028 characters; the limit is 1024"
    ):
        await run_op("base64_encode", {"value": "x" * 769}, small)
    with pytest.raises(PayloadTooLargeError, match="value:"):
        await run_op("hex_encode", {"value": "x" * 600}, small)


async def test_base32(ctx: OpContext) -> None:
    assert await run_op("base32_encode", {"value": "foobar"}, ctx) == "MZXW6YTBOI======"
    assert await run_op("base32_encode", {"value": "foobar", "padding": False}, ctx) == "MZXW6YTBOI"
    assert await run_op("base32_decode", {"value": "mzxw 6ytb oi"}, ctx) == "foobar"
    with pytest.raises(InvalidInputError, match="value: not valid base32"):
        await run_op("base32_decode", {"value": "MZ1!"}, ctx)


async def test_hex(ctx: OpContext) -> None:
    assert await run_op("hex_encode", {"value": "Hi!"}, ctx) == "486921"
    assert (
        await run_op("hex_encode", {"value": "Hi!", "uppercase": True, "separator": ":"}, ctx) == "48:69:21"
    )
    assert await run_op("hex_decode", {"value": "48:69:21"}, ctx) == "Hi!"
    assert await run_op("hex_decode", {"value": "00 FF", "output": "base64"}, ctx) == "AP8="
    with pytest.raises(InvalidInputError, match="value: not valid hex"):
        await run_op("hex_decode", {"value": "abc"}, ctx)


# ---- URLs and HTML -----------------------------------------------------------------------------------------------


async def test_url_encode_and_decode(ctx: OpContext) -> None:
    assert await run_op("url_encode", {"value": "a b/c&d=é"}, ctx) == "a%20b%2Fc%26d%3D%C3%A9"
    assert await run_op("url_encode", {"value": "a b/c", "safe": "/", "plus_spaces": True}, ctx) == "a+b/c"
    assert await run_op("url_decode", {"value": "a%20b+c%C3%A9"}, ctx) == "a b+cé"
    assert await run_op("url_decode", {"value": "a%20b+c", "plus_spaces": True}, ctx) == "a b c"


async def test_url_query_build_and_parse(tmp_path: Path, ctx: OpContext) -> None:
    query = await run_op(
        "url_query_build",
        {"params": {"q": "fish & chips", "tag": ["a", "b"], "n": 2, "on": True, "skip": None}},
        ctx,
    )
    assert query == "q=fish+%26+chips&tag=a&tag=b&n=2&on=true"
    assert await run_op("url_query_build", {}, prev(tmp_path, {"x": "1"})) == "x=1"
    assert await run_op("url_query_parse", {"value": "?" + query}, ctx) == {
        "q": "fish & chips",
        "tag": ["a", "b"],
        "n": "2",
        "on": "true",
    }
    assert await run_op("url_query_parse", {"value": "https://h/p?a=1&b=", "lists": True}, ctx) == {
        "a": ["1"],
        "b": [""],
    }
    with pytest.raises(
        InvalidInputError, match=r"params.tag: must be a string, number or boolean, not an object"
    ):
        await run_op("url_query_build", {}, prev(tmp_path, {"tag": {"nested": 1}}))
    with pytest.raises(InvalidInputError, match="params: must be an object, not a list"):
        await run_op("url_query_build", {}, prev(tmp_path, [1]))


async def test_url_parse(ctx: OpContext) -> None:
    parts = await run_op("url_parse", {"value": "https://ann@Example.com:8443/a/b?x=1&x=2#top"}, ctx)
    assert parts == {
        "scheme": "https",
        "username": "ann",
        "host": "example.com",
        "port": 8443,
        "path": "/a/b",
        "query": "x=1&x=2",
        "params": {"x": ["1", "2"]},
        "fragment": "top",
    }
    with pytest.raises(InvalidInputError, match="value: not a valid URL"):
        await run_op("url_parse", {"value": "http://h:99999/"}, ctx)


async def test_html_escape_and_unescape(ctx: OpContext) -> None:
    assert (
        await run_op("html_escape", {"value": "<a href=\"x\">'&'</a>"}, ctx)
        == "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;&#x27;&lt;/a&gt;"
    )
    assert await run_op("html_escape", {"value": '"<"', "quote": False}, ctx) == '"&lt;"'
    assert (
        await run_op("html_unescape", {"value": "&lt;p&gt; caf&eacute; &#233; &amp;amp;"}, ctx)
        == "<p> café é &amp;"
    )


# ---- hashes and HMAC -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256", "sha512", "sha3_256", "blake2b"])
async def test_hash_digest_matches_hashlib(ctx: OpContext, algorithm: str) -> None:
    expected = hashlib.new(algorithm, b"abc").hexdigest()
    assert await run_op("hash_digest", {"value": "abc", "algorithm": algorithm}, ctx) == expected


async def test_hash_digest_known_vector_and_bytes_input(ctx: OpContext) -> None:
    assert (
        await run_op("hash_digest", {"value": "abc"}, ctx)
        == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    digest = await run_op(
        "hash_digest", {"value": "AP8=", "input_encoding": "base64", "output": "base64"}, ctx
    )
    assert digest == base64.b64encode(hashlib.sha256(b"\x00\xff").digest()).decode()
    with pytest.raises(ValidationError, match="algorithm"):
        await run_op("hash_digest", {"value": "x", "algorithm": "crc7"}, ctx)


async def test_hmac_sign_uses_the_named_credential(ctx: OpContext) -> None:
    body = '{"event":"push"}'
    expected = hmac.new(SECRET.encode(), body.encode(), "sha256").hexdigest()
    assert await run_op("hmac_sign", {"value": body, "auth": "webhook"}, ctx) == expected
    assert (
        await run_op("hmac_sign", {"value": body, "auth": "webhook", "prefix": "sha256="}, ctx)
        == "sha256=" + expected
    )
    b64 = await run_op(
        "hmac_sign",
        {
            "value": body,
            "auth": "b64key",
            "secret_field": "signing_key",
            "secret_encoding": "base64",
            "algorithm": "sha512",
            "output": "base64",
        },
        ctx,
    )
    assert b64 == base64.b64encode(hmac.new(b"\x00\xffkey", body.encode(), "sha512").digest()).decode()


async def test_hmac_verify_accepts_only_the_right_signature(ctx: OpContext) -> None:
    body = "v0:1700000000:payload"
    good = "v0=" + hmac.new(SECRET.encode(), body.encode(), "sha256").hexdigest()
    base = {"value": body, "auth": "webhook", "prefix": "v0="}
    assert await run_op("hmac_verify", {**base, "signature": good}, ctx) is True
    assert await run_op("hmac_verify", {**base, "signature": good.upper().replace("V0=", "v0=")}, ctx) is True
    flipped = good[:-1] + ("1" if good.endswith("0") else "0")
    assert await run_op("hmac_verify", {**base, "signature": flipped}, ctx) is False
    assert await run_op("hmac_verify", {**base, "signature": good.removeprefix("v0=")}, ctx) is False
    assert await run_op("hmac_verify", {**base, "signature": "v0=not-hex"}, ctx) is False
    assert await run_op("hmac_verify", {**base, "value": body + "x", "signature": good}, ctx) is False
    with pytest.raises(PermissionDeniedError, match="signature: does not match"):
        await run_op(
            "hmac_verify", {**base, "value": "tampered", "signature": good, "fail_if_invalid": True}, ctx
        )


async def test_hmac_key_errors_never_reveal_the_secret(ctx: OpContext) -> None:
    with pytest.raises(InvalidInputError, match="auth: unknown credential set 'nope'") as unknown:
        await run_op("hmac_sign", {"value": "x", "auth": "nope"}, ctx)
    with pytest.raises(
        InvalidInputError,
        match=r"secret_field: credential set 'b64key' has no 'secret' \(its fields: signing_key\)",
    ) as missing:
        await run_op("hmac_sign", {"value": "x", "auth": "b64key"}, ctx)
    with pytest.raises(PermissionDeniedError, match="may not be used by tenant 'acme'") as other:
        await run_op("hmac_sign", {"value": "x", "auth": "other_tenant"}, ctx)
    for err in (unknown, missing, other):
        assert SECRET not in str(err.value) and "theirs" not in str(err.value)
    with pytest.raises(ValidationError, match="key"):
        await run_op("hmac_sign", {"value": "x", "key": SECRET}, ctx)


# ---- UUIDs ----------------------------------------------------------------------------------------------------------


async def test_uuid_generate_versions(ctx: OpContext) -> None:
    v4 = uuid.UUID(await run_op("uuid_generate", {}, ctx))
    assert v4.version == 4 and v4.variant == uuid.RFC_4122
    v5 = await run_op("uuid_generate", {"version": 5, "namespace": "dns", "name": "example.com"}, ctx)
    assert v5 == str(uuid.uuid5(uuid.NAMESPACE_DNS, "example.com")) == "cfbff0d1-9375-5685-968c-48ce8b15ae17"
    custom = await run_op("uuid_generate", {"version": 5, "namespace": v5, "name": "x"}, ctx)
    assert custom == str(uuid.uuid5(uuid.UUID(v5), "x"))
    many = await run_op("uuid_generate", {"count": 50}, ctx)
    assert len(set(many)) == 50
    with pytest.raises(ValidationError, match="name: required for version 5"):
        await run_op("uuid_generate", {"version": 5}, ctx)
    with pytest.raises(InvalidInputError, match="namespace: 'planets' is not dns, url, oid, x500 or a UUID"):
        await run_op("uuid_generate", {"version": 5, "namespace": "planets", "name": "x"}, ctx)


async def test_uuid7_is_time_ordered_and_well_formed(ctx: OpContext) -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = await run_op("uuid_generate", {"version": 7, "count": 1000}, ctx)
    after_ms = time.time_ns() // 1_000_000
    parsed = [uuid.UUID(u) for u in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert ids == sorted(ids) and len(set(ids)) == 1000  # monotonic within a millisecond too
    assert before_ms <= parsed[0].int >> 80 and parsed[-1].int >> 80 <= after_ms + 1


async def test_uuid_parse(ctx: OpContext) -> None:
    v7 = await run_op("uuid_generate", {"version": 7}, ctx)
    info = await run_op("uuid_parse", {"value": "{" + v7.upper() + "}"}, ctx)
    assert info["uuid"] == v7 and info["version"] == 7 and info["variant"] == uuid.RFC_4122
    assert info["time"].endswith("Z") and info["time"][:4] >= "2024"
    v4 = await run_op("uuid_parse", {"value": "urn:uuid:12345678-1234-4678-9234-567812345678"}, ctx)
    assert v4["version"] == 4 and v4["time"] is None and v4["hex"] == "12345678123446789234567812345678"
    with pytest.raises(InvalidInputError, match="value: 'nope' is not a UUID"):
        await run_op("uuid_parse", {"value": "nope"}, ctx)


# ---- randomness ------------------------------------------------------------------------------------------------------


async def test_random_bytes(ctx: OpContext) -> None:
    raw = base64.b64decode(await run_op("random_bytes", {"length": 24}, ctx))
    assert len(raw) == 24
    assert len(bytes.fromhex(await run_op("random_bytes", {"length": 8, "output": "hex"}, ctx))) == 8
    with pytest.raises(ValidationError, match="length"):
        await run_op("random_bytes", {"length": 0}, ctx)


async def test_random_int(ctx: OpContext) -> None:
    values = await run_op("random_int", {"min": -2, "max": 2, "count": 500}, ctx)
    assert set(values) == {-2, -1, 0, 1, 2}  # 500 draws from 5 values miss one with probability < 1e-47
    assert await run_op("random_int", {"min": 7, "max": 7}, ctx) == 7
    with pytest.raises(ValidationError, match="max: must not be below min"):
        await run_op("random_int", {"min": 3, "max": 2}, ctx)


async def test_random_choice(tmp_path: Path, ctx: OpContext) -> None:
    items = ["a", "b", "c", "d"]
    assert await run_op("random_choice", {"items": items}, ctx) in items
    assert await run_op("random_choice", {}, prev(tmp_path, [{"id": 1}])) == {"id": 1}
    picked = await run_op("random_choice", {"items": items, "count": 4}, ctx)
    assert sorted(picked) == items
    repeated = await run_op("random_choice", {"items": ["x"], "count": 3, "unique": False}, ctx)
    assert repeated == ["x", "x", "x"]
    with pytest.raises(InvalidInputError, match="count: 5 distinct items asked of a list of 4"):
        await run_op("random_choice", {"items": items, "count": 5}, ctx)
    with pytest.raises(InvalidInputError, match="items: is empty"):
        await run_op("random_choice", {"items": []}, ctx)


async def test_random_token(ctx: OpContext) -> None:
    token = await run_op("random_token", {}, ctx)
    assert len(token) == 32 and set(token) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
    code = await run_op("random_token", {"length": 8, "alphabet": "digits"}, ctx)
    assert len(code) == 8 and code.isdigit()
    assert len({await run_op("random_token", {"alphabet": "hex"}, ctx) for _ in range(20)}) == 20
    with pytest.raises(ValidationError, match="length"):
        await run_op("random_token", {"length": 4}, ctx)


# ---- JWT -------------------------------------------------------------------------------------------------------------


async def test_jwt_decode_reads_without_verifying(tmp_path: Path, ctx: OpContext) -> None:
    token = jwt.encode(
        {"sub": "ann", "iat": 1700000000, "exp": 1700003600},
        "k" * 32,
        algorithm="HS256",
        headers={"kid": "k1"},
    )
    info = await run_op("jwt_decode", {"token": "Bearer " + token}, ctx)
    assert info["header"] == {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    assert info["claims"] == {"sub": "ann", "iat": 1700000000, "exp": 1700003600}
    assert info["verified"] is False and info["expired"] is True
    assert info["issued_at"] == "2023-11-14T22:13:20Z" and info["expires_at"] == "2023-11-14T23:13:20Z"
    fresh = jwt.encode({"sub": "x", "exp": int(time.time()) + 3600}, "k" * 32, algorithm="HS256")
    assert (await run_op("jwt_decode", {}, prev(tmp_path, fresh)))["expired"] is False
    with pytest.raises(InvalidInputError, match="token: not a readable JWT"):
        await run_op("jwt_decode", {"token": "not.a.jwt"}, ctx)
