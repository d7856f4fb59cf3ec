"""Encryption at rest: nothing readable in Redis, values bound to their place, master-key rotation re-wraps only."""

from __future__ import annotations

import asyncio
import base64

import pytest
from redis.asyncio import Redis

from services.common.encryption import DecryptionError, Keyring, MasterKeys, Sealer

pytestmark = pytest.mark.integration

M1, M2 = MasterKeys.generate(), MasterKeys.generate()
SECRET = "the quarterly numbers: revenue 4.2M, churn 1.3%"


def sealer(redis: Redis, namespace: str, keys: dict[str, str] | None = None, current: str = "m1") -> Sealer:
    return Sealer(Keyring(redis, namespace, MasterKeys(keys or {"m1": M1}, current)))


async def dump(redis: Redis, namespace: str) -> str:
    out = ""
    for key in await redis.keys(f"{namespace}:*"):
        out += key + "".join(f"{k}={v}" for k, v in (await redis.hgetall(key)).items())
    return out


async def test_values_round_trip_and_redis_holds_no_plaintext_and_no_raw_key(
    redis: Redis, namespace: str
) -> None:
    s = sealer(redis, namespace)
    stored = await s.seal_text("acme", SECRET, "task:t1:inputs")
    await redis.hset(f"{namespace}:task:acme:t1", "inputs", stored)
    assert await s.open_text("acme", stored, "task:t1:inputs") == SECRET
    everything = await dump(redis, namespace)
    assert "quarterly" not in everything and "revenue" not in everything
    # The data key itself is only stored wrapped: no 32-byte AES key appears in the clear.
    keyring = Keyring(redis, namespace, MasterKeys({"m1": M1}, "m1"))
    dek_id, _ = await keyring.current("acme")
    raw_dek = (await redis.hget(f"{namespace}:deks:acme", dek_id)) or ""
    assert '"kek": "m1"' in raw_dek and "wrapped" in raw_dek
    blob = await s.seal("acme", b"\x00binary file\xff", "file:reports/a.bin")
    assert b"binary file" not in blob
    assert await s.open("acme", blob, "file:reports/a.bin") == b"\x00binary file\xff"


async def test_a_value_moved_or_altered_does_not_decrypt(redis: Redis, namespace: str) -> None:
    s = sealer(redis, namespace)
    stored = await s.seal_text("acme", SECRET, "task:t1:result")
    with pytest.raises(DecryptionError, match="integrity"):
        await s.open_text("acme", stored, "task:t2:result")  # copied to another task
    with pytest.raises(DecryptionError):
        await s.open_text("globex", stored, "task:t1:result")  # another tenant (it has no such key either)
    raw = bytearray(base64.b64decode(stored.removeprefix("enc:v1:")))
    raw[-1] ^= 1
    with pytest.raises(DecryptionError, match="integrity"):
        await s.open_text("acme", "enc:v1:" + base64.b64encode(bytes(raw)).decode(), "task:t1:result")
    with pytest.raises(DecryptionError, match="not an encrypted value"):
        await s.open_text("acme", SECRET, "task:t1:result")


async def test_master_key_rotation_rewraps_data_keys_without_touching_data(
    redis: Redis, namespace: str
) -> None:
    old = sealer(redis, namespace)
    blob = await old.seal("acme", SECRET.encode(), "file:a.txt")
    rotated_keyring = Keyring(redis, namespace, MasterKeys({"m1": M1, "m2": M2}, "m2"))
    assert await rotated_keyring.rewrap("acme") == 1
    assert await rotated_keyring.rewrap("acme") == 0  # idempotent
    # m1 can now be retired: a process holding only m2 reads data sealed before the rotation, byte for byte.
    only_m2 = sealer(redis, namespace, {"m2": M2}, "m2")
    assert await only_m2.open("acme", blob, "file:a.txt") == SECRET.encode()
    # ... and a process holding only the retired key cannot.
    with pytest.raises(DecryptionError, match="'m2', which is not configured"):
        await sealer(redis, namespace).open("acme", blob, "file:a.txt")


async def test_data_key_rotation_keeps_old_data_readable(redis: Redis, namespace: str) -> None:
    keyring = Keyring(redis, namespace, MasterKeys({"m1": M1}, "m1"))
    s = Sealer(keyring)
    before = await s.seal_text("acme", "old", "x")
    first, _ = await keyring.current("acme")
    second = await keyring.rotate_data_key("acme")
    after = await s.seal_text("acme", "new", "x")
    assert first != second and (await keyring.current("acme"))[0] == second
    assert await s.open_text("acme", before, "x") == "old"
    assert await s.open_text("acme", after, "x") == "new"


async def test_replicas_racing_for_the_first_data_key_agree(redis: Redis, namespace: str) -> None:
    rings = [Keyring(redis, namespace, MasterKeys({"m1": M1}, "m1")) for _ in range(8)]
    ids = await asyncio.gather(*(ring.current("acme") for ring in rings))
    assert len({dek_id for dek_id, _ in ids}) == 1


@pytest.mark.parametrize(
    ("keys", "current", "fragment"),
    [
        ({"m1": "not base64!"}, "m1", "not base64"),
        ({"m1": base64.b64encode(b"short").decode()}, "m1", "must be 32 bytes"),
        ({"m1": M1}, "m9", "not among the configured keys"),
    ],
)
def test_bad_master_key_settings_stop_start_up(keys: dict[str, str], current: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        MasterKeys(keys, current)
