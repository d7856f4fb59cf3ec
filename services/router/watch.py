"""The watched model table file: a changed file is parsed, checked whole and swapped in; a bad one changes nothing.

Polling the file's stat (every ``interval_s``) works on every filesystem, including Kubernetes ConfigMap volumes,
whose updates swap a symlink rather than write the file. A file that does not parse or validate is logged with the
field at fault and the previous table keeps serving; the next good version is picked up as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from services.common.errors import OpenClawError
from services.router.registry import ModelSpec, SpecContext, parse_models

log = logging.getLogger(__name__)

Apply = Callable[[list[ModelSpec]], Awaitable[object]]


class ModelFileWatcher:
    """Reloads the model table from ``path`` when its content changes."""

    def __init__(self, path: Path, ctx: SpecContext, apply: Apply, *, interval_s: float = 2.0) -> None:
        self.path = path
        self._ctx = ctx
        self._apply = apply
        self._interval = interval_s
        self._digest = self._read_digest()
        self._task: asyncio.Task[None] | None = None
        self.last_error = ""
        """Why the last changed file was refused (empty once a good one is in force)."""
        self.reloads = 0

    def _read_digest(self) -> str:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return ""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="model-file-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check(self) -> bool:
        """Reload if the file changed; True when a new table was applied."""
        digest = await asyncio.to_thread(self._read_digest)
        if not digest or digest == self._digest:
            return False
        self._digest = digest
        try:
            text = await asyncio.to_thread(self.path.read_text, encoding="utf-8")
            specs = parse_models(text, self._ctx, source=str(self.path))
            await self._apply(specs)
        except OpenClawError as exc:
            self.last_error = exc.message
            log.error(
                "model table file refused; still serving the previous table",
                extra={"path": str(self.path), "error": exc.message},
            )
            return False
        self.last_error = ""
        self.reloads += 1
        log.info("model table file reloaded", extra={"path": str(self.path), "models": len(specs)})
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except Exception:  # a transient error (Redis away): keep watching, the next change retries
                self._digest = ""
                log.warning("model table reload failed; will retry", exc_info=True)
