"""Encoding and crypto operations: base64, hex, URL, hashes, HMAC, UUIDs and randomness."""

from __future__ import annotations

from typing import Any

from services.executor.ops.base import Operation

OPERATIONS: tuple[Operation[Any], ...] = ()
