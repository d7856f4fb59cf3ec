"""The one place file contents in the tenant's storage are read and written: sealed when keys are configured.

With master keys configured (OpServices.sealer), every file an operation writes is stored as one AES-256-GCM
blob under the tenant's data key (services.common.encryption.Sealer) and every read decrypts it; without keys
files are plain bytes, exactly as before. A file without the ``OCE1`` header (written before encryption was
turned on) is read as it is.

The blob is bound to the tenant, not to the file's path (the "where" is the constant ``FILE_WHERE``): copies,
moves and renames of files and whole trees stay plain filesystem operations instead of re-sealing every file,
while a file moved to another tenant's root fails its integrity check. A tenant's own operations can copy any
of its files anyway, so binding to the path would add nothing against the tenant itself.

Operations run their file work in threads (asyncio.to_thread); the data keys live behind the event loop (Redis),
so a ``Vault`` is made on the loop and its synchronous methods hop back onto it for each seal and open.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from services.common.encryption import BLOB_MAGIC, NONCE_BYTES, DecryptionError
from services.common.errors import PayloadTooLargeError
from services.executor.ops.paths import open_confined

if TYPE_CHECKING:
    from services.common.encryption import Sealer
    from services.executor.context import OpContext

FILE_WHERE = "storage-file"
_TAG_BYTES = 16
# A sealed file is decrypted whole in memory; the writers' own limits bound what they seal, this refuses a
# file grown past any of them (by hand, say) before it is read into memory.
MAX_SEALED_BYTES = 1024**3


class Vault:
    """One operation's access to file contents: seals on write and opens on read when encryption is on."""

    def __init__(self, sealer: Sealer | None, tenant: str, loop: asyncio.AbstractEventLoop | None) -> None:
        self._sealer, self._tenant, self._loop = sealer, tenant, loop

    @property
    def sealed(self) -> bool:
        """Whether files are written encrypted."""
        return self._sealer is not None

    def seal(self, data: bytes) -> bytes:
        """The bytes to store for ``data`` (from a worker thread, never on the loop)."""
        if self._sealer is None or self._loop is None:
            return data
        return self._on_loop(self._sealer.seal(self._tenant, data, FILE_WHERE))

    def open_blob(self, raw: bytes, name: str) -> bytes:
        """The plaintext of stored bytes: decrypted if sealed, as they are if not (files from before keys)."""
        if not raw.startswith(BLOB_MAGIC):
            return raw
        if self._sealer is None or self._loop is None:
            return raw  # encryption is off: bytes are what they are, as before keys existed
        try:
            return self._on_loop(self._sealer.open(self._tenant, raw, FILE_WHERE))
        except DecryptionError:
            raise DecryptionError(
                f"path: {name!r} failed its integrity check (altered, or sealed for another tenant)"
            ) from None

    def _on_loop(self, coro: Coroutine[Any, Any, bytes]) -> bytes:
        """Run a keyring coroutine on the operation's loop and wait for it, from a worker thread."""
        assert self._loop is not None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result()
        coro.close()
        # Waiting here on the loop's own thread would deadlock it: the caller must use asyncio.to_thread.
        raise RuntimeError("Vault: sealed file contents are read and written from worker threads only")

    def is_sealed_file(self, path: Path) -> bool:
        """Whether the file on disk starts with the sealed header (only looked at when encryption is on)."""
        if self._sealer is None:
            return False
        with os.fdopen(open_confined(path, os.O_RDONLY), "rb") as f:
            return f.read(len(BLOB_MAGIC)) == BLOB_MAGIC

    def read_all(self, path: Path, name: str) -> bytes:
        """A whole file's plaintext."""
        with os.fdopen(open_confined(path, os.O_RDONLY), "rb") as f:
            if self._sealer is not None and os.fstat(f.fileno()).st_size > MAX_SEALED_BYTES:
                raise PayloadTooLargeError(
                    f"path: {name!r} is over {MAX_SEALED_BYTES} bytes, too large to decrypt",
                    limit=MAX_SEALED_BYTES,
                )
            raw = f.read()
        return self.open_blob(raw, name)

    @contextmanager
    def reader(self, path: Path, name: str, param: str = "path") -> Iterator[IO[bytes]]:
        """A binary file to read the plaintext from: the file itself when not sealed, else it decrypted."""
        f = os.fdopen(open_confined(path, os.O_RDONLY, param=param), "rb")
        try:
            if self._sealer is not None and f.read(len(BLOB_MAGIC)) == BLOB_MAGIC:
                f.seek(0)
                size = os.fstat(f.fileno()).st_size
                if size > MAX_SEALED_BYTES:
                    raise PayloadTooLargeError(
                        f"{param}: {name!r} is over {MAX_SEALED_BYTES} bytes, too large to decrypt",
                        limit=MAX_SEALED_BYTES,
                    )
                yield io.BytesIO(self.open_blob(f.read(), name))
            else:
                f.seek(0)
                yield f
        finally:
            f.close()

    @contextmanager
    def writer(self, fd: int) -> Iterator[IO[bytes]]:
        """A binary file to write plaintext to, stored in ``fd`` (closed at the end): sealed whole at the end."""
        with os.fdopen(fd, "wb") as out:
            if self._sealer is None:
                yield out
                return
            buffer = io.BytesIO()
            yield buffer
            out.write(self.seal(buffer.getvalue()))

    def plain_size(self, path: Path, stored_size: int) -> int:
        """A file's plaintext size from its header alone (stored_size for files that are not sealed)."""
        if self._sealer is None or stored_size < len(BLOB_MAGIC) + 1:
            return stored_size
        return plain_size(path, stored_size)


def plain_size(path: Path, stored_size: int) -> int:
    """The plaintext size of a sealed file: its size less the header, nonce and tag (no decryption)."""
    try:
        with os.fdopen(open_confined(path, os.O_RDONLY), "rb") as f:
            head = f.read(len(BLOB_MAGIC) + 1)
    except OSError:
        return stored_size
    if len(head) <= len(BLOB_MAGIC) or not head.startswith(BLOB_MAGIC):
        return stored_size
    overhead = len(BLOB_MAGIC) + 1 + head[len(BLOB_MAGIC)] + NONCE_BYTES + _TAG_BYTES
    return max(stored_size - overhead, 0)


def vault(ctx: OpContext) -> Vault:
    """The operation's vault; call it on the event loop (it remembers the loop for the worker threads)."""
    sealer = ctx.services.sealer
    loop = asyncio.get_running_loop() if sealer is not None else None
    return Vault(sealer, ctx.tenant, loop)


PLAIN = Vault(None, "", None)
"""A vault that reads and writes plain bytes, for callers without an operation context."""
