"""What zip and tar operations share: gathering sources, checking member names, bounds, staged extraction.

Extraction is the classic attack surface, so it happens in three steps: every member is checked (name, type,
count, total declared size) before anything is written; the archive is unpacked into a staging directory
inside the tenant's root; then each file is moved into the destination through the same confinement as every
other write. A refused archive leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import Field

from services.common.errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from services.executor.ops.base import Params
from services.executor.ops.listing import glob_entries
from services.executor.ops.paths import (
    check_relative,
    refuse_links,
    relative_name,
    resolve_dir,
    resolve_entry,
    resolve_path,
    walk,
)

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_MAGIC = frozenset("*?[")

MAX_ENTRIES = Field(
    DEFAULT_MAX_ENTRIES, ge=1, le=100_000, description="Most entries the archive may hold (zip-bomb guard)."
)
MAX_BYTES = Field(
    DEFAULT_MAX_BYTES,
    ge=1,
    le=16 * 1024**3,
    description="Most bytes, uncompressed, the archive's files may add up to (zip-bomb guard).",
)
SOURCES = Field(
    min_length=1,
    max_length=1000,
    description="Files, directories (added with everything below them) or glob patterns, relative to the "
    "tenant's root.",
)
BASE = Field(
    None,
    max_length=1024,
    description="Directory that names inside the archive are relative to; default: the tenant's root.",
)

ARCHIVE = Field(min_length=1, max_length=1024, description="The archive, relative to the tenant's root.")


class ExtractParams(Params):
    """What zip_extract and tar_extract take."""

    path: str = ARCHIVE
    destination: str | None = Field(
        None, max_length=1024, description="Directory to extract into; default: the tenant's root."
    )
    overwrite: bool = Field(False, description="Replace files that already exist in the destination.")
    max_entries: int = MAX_ENTRIES
    max_bytes: int = MAX_BYTES


@dataclass(frozen=True)
class Source:
    """A file or directory to archive and its name inside the archive."""

    path: Path
    name: str
    is_dir: bool
    size: int


def gather(
    root: Path, sources: list[str], base: str | None, *, exclude: Path, max_entries: int, max_bytes: int
) -> list[Source]:
    """The files and directories named by sources (globs expanded, trees walked), bounded; no symlinks."""
    base_dir = resolve_dir(root, base, param="base")
    real_root = root.resolve()
    found: dict[str, Source] = {}
    total = 0

    def add(path: Path, param: str) -> None:
        nonlocal total
        if path in (exclude, base_dir):
            return
        if not path.is_relative_to(base_dir):
            raise InvalidInputError(
                f"{param}: {relative_name(root, path)!r} is not under base {base or '.'!r}", param=param
            )
        st = path.lstat()
        is_dir = path.is_dir() and not path.is_symlink()
        name = path.relative_to(base_dir).as_posix()
        if name in found:
            return
        found[name] = Source(path, name, is_dir, 0 if is_dir else st.st_size)
        total += found[name].size
        if len(found) > max_entries:
            raise PayloadTooLargeError(
                f"sources: more than max_entries ({max_entries}) files", limit=max_entries
            )
        if total > max_bytes:
            raise PayloadTooLargeError(
                f"sources: more than max_bytes ({max_bytes}) to archive", limit=max_bytes
            )

    for i, source in enumerate(sources):
        param = f"sources[{i}]"
        if _MAGIC & set(source):
            matches, _ = glob_entries(root, source, max_results=max_entries + 1, param=param)
            paths = [e.path for e in matches]
        else:
            paths = [resolve_path(root, source, param=param)]
            if not os.path.lexists(paths[0]):
                raise NotFoundError(f"{param}: no such file or directory {source!r}", param=param)
        for path in paths:
            refuse_links(real_root, path, param)
            add(path, param)
            if path.is_dir():
                for entry in walk(real_root, path):
                    add(entry.path, param)
    if not found:
        raise InvalidInputError("sources: nothing matched; the archive would be empty", param="sources")
    return sorted(found.values(), key=lambda s: s.name)


def member_name(name: str, *, is_dir: bool = False) -> str:
    """A member's name, checked to stay inside the destination (no absolute paths, '..', backslashes)."""
    param = f"member {name!r}"
    if "\\" in name:
        raise PermissionDeniedError(f"{param}: names with '\\' are refused", param="path")
    pure = check_relative(name.rstrip("/") if is_dir else name, param)
    cleaned = PurePosixPath(*[part for part in pure.parts if part != "."]).as_posix()
    if cleaned in ("", "."):
        raise InvalidInputError(f"{param}: names nothing", param="path")
    return cleaned


class Budget:
    """Counts members and declared bytes while an archive is checked; refuses past either bound."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.entries = self.bytes = 0

    def add(self, size: int) -> None:
        self.entries += 1
        self.bytes += max(size, 0)
        if self.entries > self.max_entries:
            raise PayloadTooLargeError(
                f"path: the archive has more than max_entries ({self.max_entries}) members",
                limit=self.max_entries,
            )
        if self.bytes > self.max_bytes:
            raise PayloadTooLargeError(
                f"path: the archive unpacks to more than max_bytes ({self.max_bytes})", limit=self.max_bytes
            )


def extract_staged(
    root: Path,
    destination: str | None,
    names: list[str],
    overwrite: bool,
    unpack: Callable[[Path], None],
) -> dict[str, Any]:
    """Unpack into a staging directory with unpack(staging), then move every file into destination."""
    dest_dir = resolve_dir(root, destination, param="destination")
    if dest_dir.exists() and not dest_dir.is_dir():
        raise InvalidInputError(f"destination: {destination!r} is not a directory", param="destination")
    dest_rel = relative_name(root, dest_dir)
    if not overwrite:
        for name in names:
            target = dest_dir / name
            if os.path.lexists(target) and not target.is_dir():
                raise AlreadyExistsError(
                    f"destination: {relative_name(root, target)!r} already exists (set overwrite)",
                    param="destination",
                )
    staging = Path(tempfile.mkdtemp(prefix=".openclaw-extract-", dir=root.resolve()))
    try:
        unpack(staging)
        refuse_links(root.resolve(), staging, "path")  # the checks above should make this impossible
        files = 0
        for path in _tree(staging):
            rel = path.relative_to(staging).as_posix()
            final = rel if dest_rel == "." else f"{dest_rel}/{rel}"
            if path.is_dir():
                target = resolve_path(root, final, param="destination")
                if os.path.lexists(target) and not target.is_dir():
                    raise InvalidInputError(f"destination: {final!r} exists and is not a directory")
                target.mkdir(parents=True, exist_ok=True)
                continue
            target = resolve_entry(root, final, param="destination")
            if target.is_dir() and not target.is_symlink():
                raise InvalidInputError(f"destination: {final!r} is a directory", param="destination")
            if overwrite:
                os.replace(path, target)  # replaces a symlink itself, never its target
            else:
                try:
                    os.link(path, target)
                except FileExistsError as exc:
                    raise AlreadyExistsError(
                        f"destination: {final!r} already exists", param="destination"
                    ) from exc
            files += 1
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"destination": dest_rel, "files": files}


def _tree(top: Path) -> Iterator[Path]:
    """Directories before what they hold, so each is made before its files move in."""
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        base = Path(dirpath)
        for name in dirnames:
            yield base / name
        for name in sorted(filenames):
            yield base / name
