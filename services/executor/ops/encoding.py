"""Encoding and crypto operations: base64, base32, hex, URL and HTML encoding, hashes, HMAC signatures.

UUIDs, secure randomness and JWT inspection are in _encoding_ids; this module's OPERATIONS gathers both.
Binary data travels as base64 text: ops that take bytes read ``value`` as UTF-8 text by default, or as
base64 or hex with ``input_encoding``, and ops that produce bytes write base64 (or hex) text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, quote_plus, unquote, unquote_plus, urlencode, urlsplit

from pydantic import Field

from services.common.errors import InvalidInputError, PermissionDeniedError
from services.executor.context import OpContext
from services.executor.ops import _encoding_ids
from services.executor.ops._text_params import MAX_TEXT, check_size, json_kind, text_input
from services.executor.ops.base import Params, operation, scoped_credential

InputEncoding = Literal["text", "base64", "hex"]
OutputEncoding = Literal["text", "base64", "hex"]
MAX_QUERY_FIELDS = 10_000


def value_field(description: str = "The value; the previous step's output when omitted.") -> Any:
    """The primary ``value`` param: optional (the pipeline convenience), bounded."""
    return Field(None, max_length=MAX_TEXT, description=description)


def input_encoding_field() -> Any:
    return Field("text", description="How value holds its bytes: UTF-8 text, base64 or hex.")


def decode_bytes(value: str, encoding: InputEncoding, param: str) -> bytes:
    """The bytes a param holds as UTF-8 text, base64 (standard or URL-safe, padding optional) or hex."""
    if encoding == "text":
        return value.encode("utf-8", "surrogatepass")
    try:
        if encoding == "hex":
            return bytes.fromhex(value)
        compact = "".join(value.split())
        alphabet = b"-_" if "-" in compact or "_" in compact else None
        padded = compact + "=" * (-len(compact) % 4)
        return base64.b64decode(padded, altchars=alphabet, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise InvalidInputError(f"{param}: not valid {encoding}: {exc}", param=param) from None


def encode_bytes(data: bytes, encoding: OutputEncoding, param: str) -> str:
    """Bytes as UTF-8 text (failing if they are not), standard base64 or lower-case hex."""
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii")
    if encoding == "hex":
        return data.hex()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"{param}: the decoded bytes are not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "ask for output 'base64' or 'hex'",
            param=param,
        ) from None


def _value(p: Params, ctx: OpContext) -> str:
    return text_input(p, ctx, "value")


# ---- base64, base32, hex -------------------------------------------------------------------------------


class EncodeParams(Params):
    value: str | None = value_field()
    input_encoding: InputEncoding = input_encoding_field()


class Base64EncodeParams(EncodeParams):
    url_safe: bool = Field(False, description="Use the URL-safe alphabet (`-` and `_` for `+` and `/`).")
    padding: bool = Field(True, description="End with `=` padding to a multiple of four characters.")


@operation("base64_encode", category="encoding", params=Base64EncodeParams)
async def base64_encode(p: Base64EncodeParams, ctx: OpContext) -> str:
    """Encode text (UTF-8) or bytes as base64, standard or URL-safe, with or without padding."""
    data = decode_bytes(_value(p, ctx), p.input_encoding, "value")
    check_size(4 * -(-len(data) // 3), ctx, "value")
    out = (base64.urlsafe_b64encode if p.url_safe else base64.b64encode)(data).decode("ascii")
    return out if p.padding else out.rstrip("=")


class DecodeParams(Params):
    value: str | None = value_field()
    output: OutputEncoding = Field(
        "text", description="Return the bytes as UTF-8 text (an error if they are not), base64 or hex."
    )


@operation("base64_decode", category="encoding", params=DecodeParams)
async def base64_decode(p: DecodeParams, ctx: OpContext) -> str:
    """Decode base64 (standard or URL-safe, padding optional) to UTF-8 text, or to base64/hex bytes."""
    return encode_bytes(decode_bytes(_value(p, ctx), "base64", "value"), p.output, "value")


class Base32EncodeParams(EncodeParams):
    padding: bool = Field(True, description="End with `=` padding to a multiple of eight characters.")


@operation("base32_encode", category="encoding", params=Base32EncodeParams)
async def base32_encode(p: Base32EncodeParams, ctx: OpContext) -> str:
    """Encode text (UTF-8) or bytes as base32 (RFC 4648: A–Z and 2–7), as TOTP secrets are written."""
    data = decode_bytes(_value(p, ctx), p.input_encoding, "value")
    check_size(8 * -(-len(data) // 5), ctx, "value")
    out = base64.b32encode(data).decode("ascii")
    return out if p.padding else out.rstrip("=")


@operation("base32_decode", category="encoding", params=DecodeParams)
async def base32_decode(p: DecodeParams, ctx: OpContext) -> str:
    """Decode base32 (any case, padding and spaces optional) to UTF-8 text, or to base64/hex bytes."""
    compact = "".join(_value(p, ctx).split()).upper()
    try:
        data = base64.b32decode(compact + "=" * (-len(compact) % 8))
    except (ValueError, binascii.Error) as exc:
        raise InvalidInputError(f"value: not valid base32: {exc}", param="value") from None
    return encode_bytes(data, p.output, "value")


class HexEncodeParams(EncodeParams):
    uppercase: bool = Field(False, description="Use A–F rather than a–f.")
    separator: str = Field("", max_length=1, description="Put between bytes (e.g. `:` or a space).")


@operation("hex_encode", category="encoding", params=HexEncodeParams)
async def hex_encode(p: HexEncodeParams, ctx: OpContext) -> str:
    """Encode text (UTF-8) or bytes as hexadecimal, two digits per byte."""
    data = decode_bytes(_value(p, ctx), p.input_encoding, "value")
    check_size(len(data) * (2 + len(p.separator)), ctx, "value")
    out = data.hex(p.separator) if p.separator else data.hex()
    return out.upper() if p.uppercase else out


@operation("hex_decode", category="encoding", params=DecodeParams)
async def hex_decode(p: DecodeParams, ctx: OpContext) -> str:
    """Decode hexadecimal (either case; spaces, `:` and `-` between bytes allowed) to text or base64/hex bytes."""
    raw = _value(p, ctx)
    cleaned = "".join(c for c in raw if not c.isspace() and c not in ":-")
    return encode_bytes(decode_bytes(cleaned, "hex", "value"), p.output, "value")


# ---- URLs and HTML ----------------------------------------------------------------------------------------


class UrlEncodeParams(Params):
    value: str | None = value_field()
    safe: str = Field("", max_length=100, description="Characters to leave as they are (e.g. `/` for paths).")
    plus_spaces: bool = Field(
        False, description="Write spaces as `+` (HTML form encoding) rather than `%20`."
    )


@operation("url_encode", category="encoding", params=UrlEncodeParams)
async def url_encode(p: UrlEncodeParams, ctx: OpContext) -> str:
    """Percent-encode text for use in a URL (UTF-8; every reserved character unless listed in safe)."""
    value = _value(p, ctx)
    out = (quote_plus if p.plus_spaces else quote)(value, safe=p.safe)
    check_size(len(out), ctx, "value")  # at most 12 times a bounded input: checked once built
    return out


class UrlDecodeParams(Params):
    value: str | None = value_field()
    plus_spaces: bool = Field(False, description="Read `+` as a space (HTML form encoding).")


@operation("url_decode", category="encoding", params=UrlDecodeParams)
async def url_decode(p: UrlDecodeParams, ctx: OpContext) -> str:
    """Decode percent-encoding (`%20` → space; `+` too with plus_spaces) as UTF-8."""
    value = _value(p, ctx)
    return unquote_plus(value) if p.plus_spaces else unquote(value)


Scalar = str | int | float | bool


class QueryBuildParams(Params):
    params: dict[str, Scalar | list[Scalar] | None] | None = Field(
        None,
        max_length=MAX_QUERY_FIELDS,
        description="Names to values (a list repeats the name; null leaves it out); the previous output when omitted.",
    )


def _query_text(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise InvalidInputError(
        f"{where}: must be a string, number or boolean, not {json_kind(value)}", param="params"
    )


@operation("url_query_build", category="encoding", params=QueryBuildParams)
async def url_query_build(p: QueryBuildParams, ctx: OpContext) -> str:
    """Build a URL query string (`a=1&b=x+y`, no leading `?`) from an object; lists repeat the name."""
    params = p.params if "params" in p.model_fields_set else (ctx.prev_output if ctx.has_prev else None)
    if not isinstance(params, Mapping):
        raise InvalidInputError(f"params: must be an object, not {json_kind(params)}", param="params")
    pairs: list[tuple[str, str]] = []
    for name, value in params.items():
        values = value if isinstance(value, list) else [value]
        pairs.extend((str(name), _query_text(v, f"params.{name}")) for v in values if v is not None)
    out = urlencode(pairs)
    check_size(len(out), ctx, "params")
    return out


class QueryParseParams(Params):
    value: str | None = value_field("A query string (a leading `?` is fine) or a whole URL.")
    lists: bool = Field(
        False, description="Make every value a list; otherwise only repeated names get lists."
    )


@operation("url_query_parse", category="encoding", params=QueryParseParams)
async def url_query_parse(p: QueryParseParams, ctx: OpContext) -> dict[str, Any]:
    """Parse a query string (or a URL's query) into an object; repeated names give lists of values."""
    value = _value(p, ctx)
    query = urlsplit(value).query if "://" in value else value.lstrip("?")
    return parse_query(query, always_lists=p.lists)


def parse_query(query: str, *, always_lists: bool) -> dict[str, Any]:
    """A query string as an object (blank values kept)."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError as exc:
        raise InvalidInputError(f"value: {exc}", param="value") from None
    out: dict[str, Any] = {}
    for name, item in pairs:
        if name in out:
            existing = out[name]
            out[name] = [*existing, item] if isinstance(existing, list) else [existing, item]
        else:
            out[name] = [item] if always_lists else item
    return out


class UrlParseParams(Params):
    value: str | None = value_field("The URL; the previous step's output when omitted.")


@operation("url_parse", category="encoding", params=UrlParseParams)
async def url_parse(p: UrlParseParams, ctx: OpContext) -> dict[str, Any]:
    """Split a URL into scheme, username, host, port, path, query (also parsed as `params`) and fragment."""
    value = _value(p, ctx)
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError as exc:
        raise InvalidInputError(f"value: not a valid URL: {exc}", param="value") from None
    return {
        "scheme": parts.scheme,
        "username": parts.username,
        "host": parts.hostname,
        "port": port,
        "path": parts.path,
        "query": parts.query,
        "params": parse_query(parts.query, always_lists=False),
        "fragment": parts.fragment,
    }


class HtmlEscapeParams(Params):
    value: str | None = value_field()
    quote: bool = Field(True, description="Also escape `\"` and `'` (needed inside attribute values).")


@operation("html_escape", category="encoding", params=HtmlEscapeParams)
async def html_escape(p: HtmlEscapeParams, ctx: OpContext) -> str:
    """Escape `&`, `<`, `>` (and quotes) so text shows literally inside HTML."""
    value = _value(p, ctx)
    out = html.escape(value, quote=p.quote)
    check_size(len(out), ctx, "value")  # at most 6 times a bounded input: checked once built
    return out


class HtmlUnescapeParams(Params):
    value: str | None = value_field()


@operation("html_unescape", category="encoding", params=HtmlUnescapeParams)
async def html_unescape(p: HtmlUnescapeParams, ctx: OpContext) -> str:
    """Decode HTML character references (`&amp;`, `&#233;`, `&eacute;`) to the characters they stand for."""
    return html.unescape(_value(p, ctx))


# ---- hashes and HMAC ---------------------------------------------------------------------------------------

HashAlgorithm = Literal[
    "md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_256", "sha3_512", "blake2b", "blake2s"
]
HmacAlgorithm = Literal["sha1", "sha256", "sha384", "sha512", "sha3_256", "sha3_512", "md5"]
DigestEncoding = Literal["hex", "base64"]


class HashParams(EncodeParams):
    algorithm: HashAlgorithm = Field(
        "sha256", description="The hash function (md5 and sha1 only for checksums)."
    )
    output: DigestEncoding = Field("hex", description="Write the digest as hex or base64.")


@operation("hash_digest", category="encoding", params=HashParams)
async def hash_digest(p: HashParams, ctx: OpContext) -> str:
    """Hash text (UTF-8) or bytes with sha256 (or md5, sha1, sha2, sha3, blake2); the digest as hex or base64."""
    data = decode_bytes(_value(p, ctx), p.input_encoding, "value")
    digest = hashlib.new(p.algorithm, data, usedforsecurity=p.algorithm not in ("md5", "sha1")).digest()
    return encode_bytes(digest, p.output, "output")


class HmacParams(EncodeParams):
    auth: str = Field(
        min_length=1,
        max_length=200,
        description="The credential set holding the secret key (never the key itself).",
    )
    secret_field: str = Field(
        "secret", min_length=1, max_length=100, description="The key's field in that set."
    )
    secret_encoding: InputEncoding = Field(
        "text", description="How the key is written: UTF-8 text, base64 or hex."
    )
    algorithm: HmacAlgorithm = Field("sha256", description="The hash function.")
    output: DigestEncoding = Field("hex", description="Write the signature as hex or base64.")
    prefix: str = Field(
        "", max_length=50, description="Text before the signature, e.g. `sha256=` (GitHub) or `v0=`."
    )


def _hmac(p: HmacParams, ctx: OpContext) -> bytes:
    credential = scoped_credential(ctx, p.auth)
    secret = credential.get(p.secret_field)
    if not secret:
        fields = (
            ", ".join(sorted(k for k in credential if k not in ("tenants", "hosts", "buckets"))) or "none"
        )
        raise InvalidInputError(
            f"secret_field: credential set {p.auth!r} has no {p.secret_field!r} (its fields: {fields})",
            param="secret_field",
        )
    key = decode_bytes(secret, p.secret_encoding, "secret_encoding")
    data = decode_bytes(_value(p, ctx), p.input_encoding, "value")
    return hmac.new(key, data, p.algorithm).digest()


@operation("hmac_sign", category="encoding", params=HmacParams)
async def hmac_sign(p: HmacParams, ctx: OpContext) -> str:
    """Sign a message with HMAC (the key from a credential set); the output is prefix + signature, hex or base64."""
    return p.prefix + encode_bytes(_hmac(p, ctx), p.output, "output")


class HmacVerifyParams(HmacParams):
    signature: str = Field(
        min_length=1, max_length=1000, description="The signature received, prefix included."
    )
    fail_if_invalid: bool = Field(False, description="Fail the step instead of returning false.")


def _given_digest(p: HmacVerifyParams) -> bytes | None:
    if not p.signature.startswith(p.prefix):
        return None
    body = p.signature[len(p.prefix) :].strip()
    try:
        return bytes.fromhex(body) if p.output == "hex" else base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error):
        return None


@operation("hmac_verify", category="encoding", params=HmacVerifyParams)
async def hmac_verify(p: HmacVerifyParams, ctx: OpContext) -> bool:
    """Check an HMAC signature in constant time with a key from a credential set: true if it matches."""
    expected = _hmac(p, ctx)
    given = _given_digest(p)
    valid = hmac.compare_digest(expected, given if given is not None else b"")
    if not valid and p.fail_if_invalid:
        raise PermissionDeniedError("signature: does not match the message", param="signature")
    return valid


OPERATIONS = (
    base64_encode,
    base64_decode,
    base32_encode,
    base32_decode,
    hex_encode,
    hex_decode,
    url_encode,
    url_decode,
    url_query_build,
    url_query_parse,
    url_parse,
    html_escape,
    html_unescape,
    hash_digest,
    hmac_sign,
    hmac_verify,
    *_encoding_ids.OPERATIONS,
)
