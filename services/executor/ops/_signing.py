"""Webhook signatures: how webhook_send signs a body and how a receiver (or webhook_verify) checks it.

A signed request carries::

    X-OpenClaw-Timestamp: 1764093600                 (Unix seconds when it was signed)
    X-OpenClaw-Signature: v1=5257a869e7ecebeda32aff...  (hex HMAC-SHA256)
    X-OpenClaw-Delivery: 0f8f6b1e-...                  (the same on every retry of the same step and body)

where the signature is HMAC-SHA256, keyed with the credential set's ``signing_secret`` (UTF-8), over the
ASCII timestamp, a ``.``, and the raw body bytes exactly as received. A receiver recomputes it, compares in
constant time, and rejects timestamps more than five minutes from its clock (replays). The header may list
several ``v1=`` values separated by commas (during a secret rotation); any one matching is enough.
"""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP_HEADER = "X-OpenClaw-Timestamp"
SIGNATURE_HEADER = "X-OpenClaw-Signature"
DELIVERY_HEADER = "X-OpenClaw-Delivery"
EVENT_HEADER = "X-OpenClaw-Event"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value for a body sent at timestamp."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SCHEME}={mac.hexdigest()}"


def verify(
    secret: str, timestamp: str, body: bytes, signature: str, *, now: float, tolerance_s: int
) -> str | None:
    """None if the signature is valid and fresh, else the reason it is not."""
    try:
        ts = int(timestamp.strip())
    except ValueError:
        return "the timestamp is not a whole number of Unix seconds"
    if tolerance_s and abs(now - ts) > tolerance_s:
        return f"the timestamp is more than {tolerance_s}s from now (a replay, or a clock off)"
    expected = sign(secret, ts, body)
    offered = [part.strip() for part in signature.split(",") if part.strip().startswith(f"{SCHEME}=")]
    if not offered:
        return f"the signature has no {SCHEME}= value"
    if any(hmac.compare_digest(expected, candidate) for candidate in offered):
        return None
    return "the signature does not match the body and timestamp"
