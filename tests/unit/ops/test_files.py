"""Filesystem and file-content operations: behaviour, bounds and confinement to the tenant's root."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from tests.unit.ops.harness import TENANT, ctx_for, run_op


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The tenant's root, with a small tree, and a secret outside it that nothing may reach."""
    base = tmp_path / TENANT
    (base / "reports" / "2024").mkdir(parents=True)
    (base / "reports" / "a.csv").write_text("x,y\n1,2\n")
    (base / "reports" / "2024" / "b.csv").write_text("q\n")
    (base / "reports" / "notes.txt").write_text("hello")
    (base / "top.txt").write_text("top")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    return base


def outside_of(root: Path) -> Path:
    return root.parent / "outside"


# -- list, glob, stat, exists, tree size -----------------------------------------------------------


async def test_list_describes_entries_and_recurses_on_request(root: Path) -> None:
    ctx = ctx_for(root.parent)
    flat = await run_op("file_list", {"path": "reports"}, ctx)
    assert [(e["path"], e["type"], e["size"]) for e in flat["entries"]] == [
        ("reports/2024", "dir", None),
        ("reports/a.csv", "file", 8),
        ("reports/notes.txt", "file", 5),
    ]
    assert flat["truncated"] is False and flat["entries"][1]["mtime"].endswith("+00:00")
    deep = await run_op("file_list", {"recursive": True}, ctx)
    assert [e["path"] for e in deep["entries"]] == [
        "reports",
        "reports/2024",
        "reports/2024/b.csv",
        "reports/a.csv",
        "reports/notes.txt",
        "top.txt",
    ]
    cut = await run_op("file_list", {"recursive": True, "max_entries": 2}, ctx)
    assert len(cut["entries"]) == 2 and cut["truncated"] is True
    with pytest.raises(InvalidInputError, match=re.escape("path: 'top.txt' is not a directory")):
        await run_op("file_list", {"path": "top.txt"}, ctx)
    with pytest.raises(NotFoundError, match="path: no such directory"):
        await run_op("file_list", {"path": "gone"}, ctx)
    with pytest.raises(ValidationError):
        await run_op("file_list", {"max_entries": 10**6}, ctx)


async def test_list_and_glob_leave_out_symlinks_that_lead_outside(root: Path) -> None:
    ctx = ctx_for(root.parent)
    os.symlink(outside_of(root), root / "door")
    os.symlink(outside_of(root) / "secret.txt", root / "secret.txt")
    os.symlink(root / "top.txt", root / "alias.txt")
    listed = await run_op("file_list", {"recursive": True}, ctx)
    paths = {e["path"]: e["type"] for e in listed["entries"]}
    assert "door" not in paths and "secret.txt" not in paths and not any("door/" in p for p in paths)
    assert paths["alias.txt"] == "symlink"
    found = await run_op("file_glob", {"pattern": "**/*.txt"}, ctx)
    assert [m["path"] for m in found["matches"]] == ["alias.txt", "reports/notes.txt", "top.txt"]
    with pytest.raises(PermissionDeniedError, match="outside the tenant's storage"):
        await run_op("file_list", {"path": "door"}, ctx)
    with pytest.raises(PermissionDeniedError, match=re.escape("pattern: 'door/*' leads outside")):
        await run_op("file_glob", {"pattern": "door/*"}, ctx)


async def test_glob_patterns(root: Path) -> None:
    ctx = ctx_for(root.parent)

    async def glob(pattern: str, **extra: object) -> list[str]:
        out = await run_op("file_glob", {"pattern": pattern, **extra}, ctx)
        return [m["path"] for m in out["matches"]]

    assert await glob("reports/**/*.csv") == ["reports/2024/b.csv", "reports/a.csv"]
    assert await glob("reports/*.csv") == ["reports/a.csv"]
    assert await glob("*") == ["reports", "top.txt"]
    assert await glob("*", files_only=True) == ["top.txt"]
    assert await glob("reports/[an]*") == ["reports/a.csv", "reports/notes.txt"]
    assert await glob("reports/?.csv") == ["reports/a.csv"]
    assert await glob("reports/notes.txt") == ["reports/notes.txt"]
    assert await glob("missing/**") == []
    out = await run_op("file_glob", {"pattern": "**", "max_results": 3}, ctx)
    assert len(out["matches"]) == 3 and out["truncated"] is True
    for bad, fragment in (("../*", "contains '..'"), ("/etc/*", "is absolute"), ("a\\b", "'\\' is not")):
        with pytest.raises(InvalidInputError, match=re.escape(fragment)) as err:
            await glob(bad)
        assert err.value.message.startswith("pattern: ")


async def test_stat_exists_and_tree_size(root: Path) -> None:
    ctx = ctx_for(root.parent)
    os.symlink(root / "top.txt", root / "alias.txt")
    os.symlink(outside_of(root) / "secret.txt", root / "leak.txt")
    info = await run_op("file_stat", {"path": "reports/a.csv"}, ctx)
    assert info["type"] == "file" and info["size"] == 8 and info["mode"].startswith("0o")
    assert (await run_op("file_stat", {"path": "reports"}, ctx))["type"] == "dir"
    link = await run_op("file_stat", {"path": "alias.txt"}, ctx)
    assert link["type"] == "symlink" and link["target"] == "top.txt"
    with pytest.raises(PermissionDeniedError, match="symlink that leads outside"):
        await run_op("file_stat", {"path": "leak.txt"}, ctx)
    with pytest.raises(NotFoundError, match="path: no such file"):
        await run_op("file_stat", {"path": "nope.txt"}, ctx)

    assert await run_op("file_exists", {"path": "reports/a.csv"}, ctx) == {
        "path": "reports/a.csv",
        "exists": True,
        "type": "file",
    }
    assert (await run_op("file_exists", {"path": "top.txt/under"}, ctx))["exists"] is False
    assert (await run_op("file_exists", {"path": "nope"}, ctx))["type"] is None
    with pytest.raises(PermissionDeniedError):
        await run_op("file_exists", {"path": "leak.txt"}, ctx)

    size = await run_op("file_tree_size", {"path": "reports"}, ctx)
    assert size == {"path": "reports", "bytes": 8 + 2 + 5, "files": 3, "dirs": 1}
    whole = await run_op("file_tree_size", {}, ctx)
    assert whole["bytes"] == 8 + 2 + 5 + 3 and whole["files"] == 4  # the symlinks are not followed
    assert (await run_op("file_tree_size", {"path": "top.txt"}, ctx))["bytes"] == 3
    with pytest.raises(NotFoundError):
        await run_op("file_tree_size", {"path": "gone"}, ctx)


# -- mkdir, touch ----------------------------------------------------------------------------------


async def test_mkdir_and_touch(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path)
    root = tmp_path / TENANT
    assert await run_op("file_mkdir", {"path": "a/b/c"}, ctx) == {"path": "a/b/c", "created": True}
    assert (root / "a" / "b" / "c").is_dir()
    assert (await run_op("file_mkdir", {"path": "a/b"}, ctx))["created"] is False
    with pytest.raises(AlreadyExistsError, match="path: 'a/b' already exists"):
        await run_op("file_mkdir", {"path": "a/b", "exist_ok": False}, ctx)

    touched = await run_op("file_touch", {"path": "a/new/empty.txt"}, ctx)
    assert touched == {"path": "a/new/empty.txt", "created": True, "size": 0}
    (root / "a" / "f.txt").write_text("keep")
    os.utime(root / "a" / "f.txt", (1, 1))
    again = await run_op("file_touch", {"path": "a/f.txt"}, ctx)
    assert again == {"path": "a/f.txt", "created": False, "size": 4}
    assert (root / "a" / "f.txt").stat().st_mtime > time.time() - 3600
    assert (root / "a" / "f.txt").read_text() == "keep"
    with pytest.raises(InvalidInputError, match="exists and is not a directory"):
        await run_op("file_mkdir", {"path": "a/f.txt"}, ctx)
    with pytest.raises(InvalidInputError, match="a parent of"):
        await run_op("file_mkdir", {"path": "a/f.txt/sub"}, ctx)


async def test_mkdir_and_touch_cannot_leave_the_root(root: Path) -> None:
    ctx = ctx_for(root.parent)
    os.symlink(outside_of(root), root / "door")
    with pytest.raises(PermissionDeniedError):
        await run_op("file_mkdir", {"path": "door/x"}, ctx)
    with pytest.raises(PermissionDeniedError):
        await run_op("file_touch", {"path": "door/x.txt"}, ctx)
    with pytest.raises(InvalidInputError, match=re.escape("contains '..'")):
        await run_op("file_mkdir", {"path": "../escape"}, ctx)
    assert sorted(p.name for p in outside_of(root).iterdir()) == ["secret.txt"]


# -- copy, move, delete ----------------------------------------------------------------------------


async def test_copy_files_and_trees(root: Path) -> None:
    ctx = ctx_for(root.parent)
    out = await run_op("file_copy", {"source": "top.txt", "destination": "copies/top.txt"}, ctx)
    assert out == {"source": "top.txt", "destination": "copies/top.txt", "files": 1}
    assert (root / "copies" / "top.txt").read_text() == "top"
    with pytest.raises(AlreadyExistsError, match=re.escape("destination: 'copies/top.txt' already exists")):
        await run_op("file_copy", {"source": "reports/notes.txt", "destination": "copies/top.txt"}, ctx)
    await run_op(
        "file_copy", {"source": "reports/notes.txt", "destination": "copies/top.txt", "overwrite": True}, ctx
    )
    assert (root / "copies" / "top.txt").read_text() == "hello"
    assert [p.name for p in (root / "copies").iterdir()] == ["top.txt"]  # no temporary left behind

    with pytest.raises(InvalidInputError, match="source: 'reports' is a directory; set recursive"):
        await run_op("file_copy", {"source": "reports", "destination": "backup"}, ctx)
    tree = await run_op("file_copy", {"source": "reports", "destination": "backup", "recursive": True}, ctx)
    assert tree["files"] == 3 and (root / "backup" / "2024" / "b.csv").read_text() == "q\n"
    with pytest.raises(AlreadyExistsError):
        await run_op("file_copy", {"source": "reports", "destination": "backup", "recursive": True}, ctx)
    with pytest.raises(InvalidInputError, match="into itself"):
        await run_op(
            "file_copy", {"source": "reports", "destination": "reports/2024/x", "recursive": True}, ctx
        )
    with pytest.raises(NotFoundError, match="source: no such file"):
        await run_op("file_copy", {"source": "nope", "destination": "x"}, ctx)


async def test_copy_refuses_symlinks_out_and_replaces_links_not_their_targets(root: Path) -> None:
    ctx = ctx_for(root.parent)
    outside = outside_of(root)
    os.symlink(outside, root / "door")
    os.symlink(outside / "secret.txt", root / "leak.txt")
    with pytest.raises(PermissionDeniedError, match=re.escape("source: 'leak.txt' leads outside")):
        await run_op("file_copy", {"source": "leak.txt", "destination": "stolen.txt"}, ctx)
    with pytest.raises(PermissionDeniedError, match=re.escape("destination: 'door/x.txt' leads outside")):
        await run_op("file_copy", {"source": "top.txt", "destination": "door/x.txt"}, ctx)
    # Overwriting a destination that is a symlink (even one leading out) replaces the link itself.
    await run_op("file_copy", {"source": "top.txt", "destination": "leak.txt", "overwrite": True}, ctx)
    assert not (root / "leak.txt").is_symlink() and (root / "leak.txt").read_text() == "top"
    assert (outside / "secret.txt").read_text() == "secret"
    # A tree holding a symlink (even one that stays inside) is refused as a whole.
    os.symlink(root / "top.txt", root / "reports" / "alias.txt")
    with pytest.raises(PermissionDeniedError, match=re.escape("'reports/alias.txt' is a symlink")):
        await run_op("file_copy", {"source": "reports", "destination": "backup", "recursive": True}, ctx)
    assert not (root / "backup").exists()


async def test_move_and_rename(root: Path) -> None:
    ctx = ctx_for(root.parent)
    out = await run_op("file_move", {"source": "top.txt", "destination": "moved/top2.txt"}, ctx)
    assert out == {"source": "top.txt", "destination": "moved/top2.txt", "type": "file"}
    assert not (root / "top.txt").exists() and (root / "moved" / "top2.txt").read_text() == "top"
    await run_op("file_move", {"source": "reports", "destination": "archive/reports"}, ctx)
    assert (root / "archive" / "reports" / "2024" / "b.csv").exists()
    with pytest.raises(AlreadyExistsError):
        await run_op("file_move", {"source": "moved/top2.txt", "destination": "archive/reports/a.csv"}, ctx)
    await run_op(
        "file_move",
        {"source": "moved/top2.txt", "destination": "archive/reports/a.csv", "overwrite": True},
        ctx,
    )
    assert (root / "archive" / "reports" / "a.csv").read_text() == "top"
    with pytest.raises(InvalidInputError, match="into itself"):
        await run_op("file_move", {"source": "archive", "destination": "archive/reports/inner"}, ctx)
    with pytest.raises(NotFoundError, match="source: no such file"):
        await run_op("file_move", {"source": "top.txt", "destination": "x"}, ctx)
    os.symlink(outside_of(root), root / "door")
    with pytest.raises(PermissionDeniedError, match="destination"):
        await run_op("file_move", {"source": "archive", "destination": "door/archive"}, ctx)
    with pytest.raises(PermissionDeniedError, match="source: 'door' is a symlink that leads outside"):
        await run_op("file_move", {"source": "door", "destination": "door2"}, ctx)
    assert sorted(p.name for p in outside_of(root).iterdir()) == ["secret.txt"]


async def test_delete(root: Path) -> None:
    ctx = ctx_for(root.parent)
    assert await run_op("file_delete", {"path": "top.txt"}, ctx) == {
        "path": "top.txt",
        "deleted": True,
        "type": "file",
    }
    assert not (root / "top.txt").exists()
    with pytest.raises(NotFoundError):
        await run_op("file_delete", {"path": "top.txt"}, ctx)
    assert (await run_op("file_delete", {"path": "top.txt", "missing_ok": True}, ctx))["deleted"] is False
    with pytest.raises(InvalidInputError, match="is a directory; set recursive"):
        await run_op("file_delete", {"path": "reports"}, ctx)
    # Deleting a tree with a symlink to the outside removes the link, never what it points to.
    os.symlink(outside_of(root), root / "reports" / "door")
    os.symlink(outside_of(root), root / "door")
    assert (await run_op("file_delete", {"path": "reports", "recursive": True}, ctx))["type"] == "dir"
    assert (await run_op("file_delete", {"path": "door"}, ctx))["type"] == "symlink"
    assert not (root / "reports").exists() and not (root / "door").is_symlink()
    assert (outside_of(root) / "secret.txt").read_text() == "secret"
    for bad in ("..", ".", "/etc/passwd"):
        with pytest.raises(InvalidInputError):
            await run_op("file_delete", {"path": bad, "recursive": True}, ctx)


# -- checksum, lines, write-if-absent --------------------------------------------------------------


async def test_checksum(root: Path) -> None:
    ctx = ctx_for(root.parent)
    data = (root / "reports" / "a.csv").read_bytes()
    out = await run_op("file_checksum", {"path": "reports/a.csv"}, ctx)
    assert out == {
        "path": "reports/a.csv",
        "algorithm": "sha256",
        "hex": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    md5 = await run_op("file_checksum", {"path": "reports/a.csv", "algorithm": "md5"}, ctx)
    assert md5["hex"] == hashlib.md5(data).hexdigest()
    with pytest.raises(ValidationError, match="algorithm"):
        await run_op("file_checksum", {"path": "reports/a.csv", "algorithm": "crc0"}, ctx)
    with pytest.raises(NotFoundError):
        await run_op("file_checksum", {"path": "nope"}, ctx)
    os.symlink(outside_of(root) / "secret.txt", root / "leak.txt")
    with pytest.raises(PermissionDeniedError):
        await run_op("file_checksum", {"path": "leak.txt"}, ctx)


async def test_read_lines_by_range_and_from_the_end(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path)
    (tmp_path / TENANT).mkdir()
    (tmp_path / TENANT / "log.txt").write_text("".join(f"line {i}\r\n" for i in range(1, 11)))
    out = await run_op("file_read_lines", {"path": "log.txt", "start": 3, "count": 2}, ctx)
    assert out == {"path": "log.txt", "first": 3, "lines": ["line 3", "line 4"], "more": True}
    rest = await run_op("file_read_lines", {"path": "log.txt", "start": 9}, ctx)
    assert rest["lines"] == ["line 9", "line 10"] and rest["more"] is False
    tail = await run_op("file_read_lines", {"path": "log.txt", "count": 3, "from_end": True}, ctx)
    assert tail == {"path": "log.txt", "first": 8, "lines": ["line 8", "line 9", "line 10"], "more": True}
    before = await run_op(
        "file_read_lines", {"path": "log.txt", "start": 3, "count": 2, "from_end": True}, ctx
    )
    assert before["lines"] == ["line 7", "line 8"]
    everything = await run_op("file_read_lines", {"path": "log.txt", "count": 50, "from_end": True}, ctx)
    assert len(everything["lines"]) == 10 and everything["more"] is False
    beyond = await run_op("file_read_lines", {"path": "log.txt", "start": 20, "from_end": True}, ctx)
    assert beyond["lines"] == []
    past = await run_op("file_read_lines", {"path": "log.txt", "start": 99}, ctx)
    assert past == {"path": "log.txt", "first": None, "lines": [], "more": False}
    with pytest.raises(ValidationError, match="count"):
        await run_op("file_read_lines", {"path": "log.txt", "count": 0}, ctx)


async def test_read_lines_bounds_and_encoding(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path, max_output_bytes=1024)
    (tmp_path / TENANT).mkdir()
    (tmp_path / TENANT / "long.txt").write_bytes(b"short\n" + b"x" * 5000 + b"\n")
    (tmp_path / TENANT / "bin.txt").write_bytes(b"\xff\xfe\n")
    (tmp_path / TENANT / "many.txt").write_bytes(b"0123456789\n" * 200)
    assert (await run_op("file_read_lines", {"path": "long.txt", "count": 1}, ctx))["lines"] == ["short"]
    with pytest.raises(
        PayloadTooLargeError, match=re.escape("line 2 of 'long.txt' is longer than 1024 bytes")
    ):
        await run_op("file_read_lines", {"path": "long.txt"}, ctx)
    with pytest.raises(PayloadTooLargeError, match="count: lines 1-"):
        await run_op("file_read_lines", {"path": "many.txt", "count": 200}, ctx)
    with pytest.raises(InvalidInputError, match=re.escape("path: 'bin.txt' is not UTF-8")):
        await run_op("file_read_lines", {"path": "bin.txt"}, ctx)


async def test_append_lines(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path)
    out = await run_op("file_append_lines", {"path": "logs/run.log", "lines": ["a", "b"]}, ctx)
    assert out == {"path": "logs/run.log", "appended": 2, "size": 4}
    log = tmp_path / TENANT / "logs" / "run.log"
    log.write_text(log.read_text() + "unterminated")
    await run_op("file_append_lines", {"path": "logs/run.log", "lines": "c"}, ctx)
    assert log.read_text() == "a\nb\nunterminated\nc\n"
    piped = ctx_for(tmp_path, prev=["d", "e"], has_prev=True)
    assert (await run_op("file_append_lines", {"path": "logs/run.log"}, piped))["appended"] == 2
    assert log.read_text().endswith("c\nd\ne\n")
    with pytest.raises(InvalidInputError, match="lines: must be a string or a list of strings"):
        await run_op(
            "file_append_lines", {"path": "logs/run.log"}, ctx_for(tmp_path, prev={"x": 1}, has_prev=True)
        )
    with pytest.raises(InvalidInputError, match="lines: required"):
        await run_op("file_append_lines", {"path": "logs/run.log"}, ctx)


async def test_write_if_absent(root: Path) -> None:
    ctx = ctx_for(root.parent)
    first = await run_op(
        "file_write_if_absent", {"path": "once/marker.json", "content": {"a": 1}, "format": "json"}, ctx
    )
    assert first == {"path": "once/marker.json", "written": True, "size": len(b'{\n  "a": 1\n}')}
    again = await run_op("file_write_if_absent", {"path": "once/marker.json", "content": "other"}, ctx)
    assert again["written"] is False and (root / "once" / "marker.json").read_text() == '{\n  "a": 1\n}'
    # An existing symlink counts as present: nothing is written through it.
    os.symlink(outside_of(root) / "secret.txt", root / "leak.txt")
    with pytest.raises(PermissionDeniedError):
        await run_op("file_write_if_absent", {"path": "leak.txt", "content": "x"}, ctx)
    os.symlink(root / "top.txt", root / "alias.txt")
    assert (await run_op("file_write_if_absent", {"path": "alias.txt", "content": "x"}, ctx))[
        "written"
    ] is False
    assert (root / "top.txt").read_text() == "top"
    with pytest.raises(InvalidInputError, match="content: not valid base64"):
        await run_op("file_write_if_absent", {"path": "b.bin", "content": "!!", "format": "base64"}, ctx)


async def test_symlink_loops_are_refused_not_crashed_on(root: Path) -> None:
    ctx = ctx_for(root.parent)
    os.symlink(root / "loop_b", root / "loop_a")
    os.symlink(root / "loop_a", root / "loop_b")
    with pytest.raises(InvalidInputError, match="path: 'loop_a/x' cannot be resolved"):
        await run_op("file_read_lines", {"path": "loop_a/x"}, ctx)
    listed = await run_op("file_list", {}, ctx)
    assert not any(e["path"].startswith("loop") for e in listed["entries"])  # treated as leading outside
    assert (await run_op("file_delete", {"path": "loop_a"}, ctx))["type"] == "symlink"
