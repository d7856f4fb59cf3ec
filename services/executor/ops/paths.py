"""Tenant path confinement: the one place every file, archive and object operation turns a param into a path.

Every path is relative to ``storage_root/<tenant>/``. Absolute paths and ``..`` are refused outright; the
joined path is then resolved (following symlinks) and must still lie inside the root, and files are opened
with O_NOFOLLOW so a symlink swapped in after the check is not followed either. Operations that walk a tree
(list, glob, copy, archive) never follow symlinks: a link that leads outside the root is left out of results
and refused as the source of a copy or an archive.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from services.common.errors import InvalidInputError, NotFoundError, PermissionDeniedError


def check_relative(relative: str, param: str) -> PurePosixPath:
    """Refuse what is wrong with the text alone: empty, NUL, absolute, '..' (also for names in archives)."""
    if not isinstance(relative, str) or not relative.strip():
        raise InvalidInputError(f"{param}: must be a non-empty relative path", param=param)
    if "\x00" in relative:
        raise InvalidInputError(f"{param}: must not contain NUL", param=param)
    pure = PurePosixPath(relative)
    if pure.is_absolute() or relative.startswith(("~", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        raise InvalidInputError(
            f"{param}: {relative!r} is absolute; paths are relative to the tenant's storage", param=param
        )
    if ".." in pure.parts or ".." in relative.split("\\"):
        raise InvalidInputError(
            f"{param}: {relative!r} contains '..'; paths cannot leave the tenant's storage", param=param
        )
    return pure


def _resolved(path: Path, relative: str, param: str) -> Path:
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:  # RuntimeError: a symlink loop (Python 3.11)
        raise InvalidInputError(f"{param}: {relative!r} cannot be resolved: {exc}", param=param) from exc


def _confined(real_root: Path, target: Path, relative: str, param: str) -> Path:
    if target != real_root and not target.is_relative_to(real_root):
        raise PermissionDeniedError(
            f"{param}: {relative!r} leads outside the tenant's storage (through a symlink)", param=param
        )
    return target


def resolve_path(root: Path, relative: str, *, param: str = "path", allow_root: bool = False) -> Path:
    """The absolute path of ``relative`` inside ``root``, symlinks followed; refuses anything that leaves it."""
    pure = check_relative(relative, param)
    real_root = root.resolve()
    target = _confined(real_root, _resolved(real_root / pure, relative, param), relative, param)
    if target == real_root and not allow_root:
        raise InvalidInputError(f"{param}: {relative!r} names the storage root, not a file", param=param)
    return target


def resolve_entry(root: Path, relative: str, *, param: str = "path") -> Path:
    """Like resolve_path, but the last component is not followed: a symlink names the link itself.

    For operations on the directory entry (delete, move, rename, replace): they act on a link, never on
    what it points to.
    """
    pure = check_relative(relative, param)
    real_root = root.resolve()
    if pure.name in ("", "."):
        raise InvalidInputError(f"{param}: {relative!r} names the storage root, not a file", param=param)
    parent = _confined(real_root, _resolved(real_root / pure.parent, relative, param), relative, param)
    return parent / pure.name


def resolve_dir(root: Path, relative: str | None, *, param: str = "path") -> Path:
    """A directory inside root (None or '.' is the root itself); the root is created if missing."""
    root.mkdir(parents=True, exist_ok=True)
    if relative is None or relative.strip() in (".", "./"):
        return root.resolve()
    return resolve_path(root, relative, param=param, allow_root=True)


def relative_name(root: Path, target: Path) -> str:
    """target as a path relative to the tenant's root ('.' for the root itself)."""
    return target.relative_to(root.resolve()).as_posix()


def open_confined(path: Path, flags: int, mode: int = 0o640, *, param: str = "path") -> int:
    """os.open with O_NOFOLLOW, turning OS errors into the catalogue's errors."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except FileNotFoundError as exc:
        raise NotFoundError(f"{param}: no such file {path.name!r}", param=param) from exc
    except IsADirectoryError as exc:
        raise InvalidInputError(f"{param}: {path.name!r} is a directory", param=param) from exc
    except FileExistsError as exc:
        raise InvalidInputError(
            f"{param}: {path.name!r} already exists (mode 'create')", param=param
        ) from exc
    except NotADirectoryError as exc:
        raise InvalidInputError(f"{param}: a parent of {path.name!r} is a file", param=param) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component became a symlink after the check
            raise PermissionDeniedError(f"{param}: {path.name!r} is a symlink", param=param) from exc
        raise


def inside(real_root: Path, link: Path) -> bool:
    """Whether a symlink's final target lies inside the (resolved) root (a loop counts as outside)."""
    try:
        target = link.resolve()
    except (RuntimeError, OSError):
        return False
    return target == real_root or target.is_relative_to(real_root)


def kind(mode: int) -> str:
    """'file', 'dir', 'symlink' or 'other' for an lstat mode."""
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


@dataclass(frozen=True)
class Entry:
    """One directory entry met by walk: its path, lstat result and kind."""

    path: Path
    st: os.stat_result

    @property
    def kind(self) -> str:
        return kind(self.st.st_mode)


def walk(
    real_root: Path, start: Path, *, recursive: bool = True, max_depth: int | None = None
) -> Iterator[Entry]:
    """Entries under start, depth first in name order, never following symlinks.

    Symlinks whose target lies outside the root are left out: their names are all a tenant could learn,
    and nothing under them is visited. max_depth 1 is start's children only.
    """
    # An explicit stack, not recursion: a deep tree cannot exhaust Python's recursion limit.
    stack: list[Iterator[Entry]] = [_children(real_root, start)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        yield entry
        if recursive and entry.kind == "dir" and (max_depth is None or len(stack) < max_depth):
            stack.append(_children(real_root, entry.path))


def _children(real_root: Path, directory: Path) -> Iterator[Entry]:
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        path = Path(entry.path)
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode) and not inside(real_root, path):
            continue
        yield Entry(path, st)


def refuse_links(real_root: Path, start: Path, param: str) -> None:
    """Refuse a tree (for copy or archive) that holds any symlink or special file."""
    if start.is_symlink():
        raise PermissionDeniedError(f"{param}: {start.name!r} is a symlink", param=param)
    if not start.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
        for name in (*dirnames, *filenames):
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                rel = relative_name(real_root, path)
                raise PermissionDeniedError(
                    f"{param}: {rel!r} is a {kind(mode)}; trees with symlinks or special files are refused",
                    param=param,
                )
