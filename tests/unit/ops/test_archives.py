"""Archive operations: zip, tar and gzip round trips, and extraction's defences (zip-slip, links, bombs)."""

from __future__ import annotations

import gzip
import io
import os
import re
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    OpenClawError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from tests.unit.ops.harness import TENANT, ctx_for, run_op


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The tenant's root with a small tree to archive, and a directory outside it."""
    base = tmp_path / TENANT
    (base / "reports" / "2024").mkdir(parents=True)
    (base / "reports" / "a.csv").write_text("x,y\n1,2\n")
    (base / "reports" / "2024" / "b.csv").write_text("q\n")
    (base / "top.txt").write_text("top")
    (tmp_path / "outside").mkdir()
    return base


def tree(base: Path) -> dict[str, bytes]:
    """Every file under base (relative path to content), hidden staging directories included."""
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def hidden(base: Path) -> list[str]:
    """Hidden names in base: a staging directory or temporary file left behind would show here."""
    return [p.name for p in base.iterdir() if p.name.startswith(".")]


def write_zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in members:
            zf.writestr(info, data)


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


# -- zip ---------------------------------------------------------------------------------------------


async def test_zip_round_trip(root: Path) -> None:
    ctx = ctx_for(root.parent)
    made = await run_op("zip_create", {"path": "out/r.zip", "sources": ["reports", "top.txt"]}, ctx)
    assert made["path"] == "out/r.zip" and made["files"] == 3 and made["bytes"] == 8 + 2 + 3
    assert made["size"] == (root / "out" / "r.zip").stat().st_size
    listed = await run_op("zip_list", {"path": "out/r.zip"}, ctx)
    assert [(e["name"], e["type"]) for e in listed["entries"]] == [
        ("reports/", "dir"),
        ("reports/2024/", "dir"),
        ("reports/2024/b.csv", "file"),
        ("reports/a.csv", "file"),
        ("top.txt", "file"),
    ]
    assert listed["total_bytes"] == 13 and listed["truncated"] is False
    cut = await run_op("zip_list", {"path": "out/r.zip", "max_entries": 2}, ctx)
    assert len(cut["entries"]) == 2 and cut["truncated"] is True

    out = await run_op("zip_extract", {"path": "out/r.zip", "destination": "copy"}, ctx)
    assert out == {"path": "out/r.zip", "destination": "copy", "files": 3}
    assert tree(root / "copy") == {
        "reports/2024/b.csv": b"q\n",
        "reports/a.csv": b"x,y\n1,2\n",
        "top.txt": b"top",
    }
    with pytest.raises(
        AlreadyExistsError, match=re.escape("destination: 'copy/reports/2024/b.csv' already exists")
    ):
        await run_op("zip_extract", {"path": "out/r.zip", "destination": "copy"}, ctx)
    (root / "copy" / "top.txt").write_text("changed")
    await run_op("zip_extract", {"path": "out/r.zip", "destination": "copy", "overwrite": True}, ctx)
    assert (root / "copy" / "top.txt").read_text() == "top"
    assert not hidden(root)  # no staging directory left behind


async def test_zip_create_with_globs_a_base_and_bounds(root: Path) -> None:
    ctx = ctx_for(root.parent)
    params = {"path": "csv.zip", "sources": ["reports/**/*.csv"], "base": "reports", "compression": "lzma"}
    await run_op("zip_create", params, ctx)
    with zipfile.ZipFile(root / "csv.zip") as zf:
        assert sorted(zf.namelist()) == ["2024/b.csv", "a.csv"]
        assert zf.read("a.csv") == b"x,y\n1,2\n"
    with pytest.raises(AlreadyExistsError, match=re.escape("path: 'csv.zip' already exists")):
        await run_op("zip_create", params, ctx)
    with pytest.raises(
        InvalidInputError, match=re.escape("sources[0]: 'top.txt' is not under base 'reports'")
    ):
        await run_op("zip_create", {"path": "x.zip", "sources": ["top.txt"], "base": "reports"}, ctx)
    with pytest.raises(InvalidInputError, match=re.escape("sources[1]: '../*' contains '..'")):
        await run_op("zip_create", {"path": "x.zip", "sources": ["top.txt", "../*"]}, ctx)
    with pytest.raises(InvalidInputError, match="sources: nothing matched"):
        await run_op("zip_create", {"path": "x.zip", "sources": ["*.nothing"]}, ctx)
    with pytest.raises(NotFoundError, match=re.escape("sources[1]: no such file")):
        await run_op("zip_create", {"path": "x.zip", "sources": ["top.txt", "gone.txt"]}, ctx)
    with pytest.raises(PayloadTooLargeError, match=re.escape("more than max_entries (2)")):
        await run_op("zip_create", {"path": "x.zip", "sources": ["reports"], "max_entries": 2}, ctx)
    with pytest.raises(PayloadTooLargeError, match=re.escape("more than max_bytes (5)")):
        await run_op("zip_create", {"path": "x.zip", "sources": ["reports"], "max_bytes": 5}, ctx)
    with pytest.raises(ValidationError, match="compression"):
        await run_op("zip_create", {"path": "x.zip", "sources": ["top.txt"], "compression": "rar"}, ctx)
    assert not (root / "x.zip").exists()


async def test_archives_refuse_symlinked_sources(root: Path) -> None:
    ctx = ctx_for(root.parent)
    os.symlink(root / "top.txt", root / "reports" / "alias.txt")
    os.symlink(root.parent / "outside", root / "door")
    with pytest.raises(PermissionDeniedError, match=re.escape("'reports/alias.txt' is a symlink")):
        await run_op("zip_create", {"path": "x.zip", "sources": ["reports"]}, ctx)
    with pytest.raises(PermissionDeniedError, match="leads outside"):
        await run_op("tar_create", {"path": "x.tgz", "sources": ["door/*"]}, ctx)
    with pytest.raises(PermissionDeniedError, match="leads outside"):
        await run_op("zip_create", {"path": "door/x.zip", "sources": ["top.txt"]}, ctx)
    assert list((root.parent / "outside").iterdir()) == []


@pytest.mark.parametrize(
    ("name", "error", "fragment"),
    [
        ("../evil.txt", InvalidInputError, "contains '..'"),
        ("a/../../evil.txt", InvalidInputError, "contains '..'"),
        ("/tmp/evil.txt", InvalidInputError, "is absolute"),
        ("..\\evil.txt", PermissionDeniedError, "'\\' are refused"),
        ("C:/evil.txt", InvalidInputError, "is absolute"),
    ],
)
async def test_zip_extract_refuses_names_that_leave_the_destination(
    root: Path, name: str, error: type[OpenClawError], fragment: str
) -> None:
    ctx = ctx_for(root.parent)
    write_zip(root / "evil.zip", [("fine.txt", b"ok"), (name, b"pwned")])
    before = tree(root.parent)
    with pytest.raises(error, match=re.escape(fragment)):
        await run_op("zip_extract", {"path": "evil.zip", "destination": "x"}, ctx)
    assert tree(root.parent) == before  # nothing written, not even the harmless member


async def test_zip_extract_refuses_symlinks_and_bombs(root: Path) -> None:
    ctx = ctx_for(root.parent)
    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    write_zip(root / "link.zip", [(link, b"/etc/passwd")])
    with pytest.raises(PermissionDeniedError, match="member 'link' is a symlink"):
        await run_op("zip_extract", {"path": "link.zip"}, ctx)
    # 5 MB of zeros deflate to a few KB: refused by its declared size before anything is inflated.
    with zipfile.ZipFile(root / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * 5_000_000)
    assert (root / "bomb.zip").stat().st_size < 20_000
    with pytest.raises(PayloadTooLargeError, match=re.escape("unpacks to more than max_bytes (1000000)")):
        await run_op("zip_extract", {"path": "bomb.zip", "max_bytes": 1_000_000}, ctx)
    write_zip(root / "many.zip", [(f"f{i}.txt", b"") for i in range(20)])
    with pytest.raises(PayloadTooLargeError, match=re.escape("more than max_entries (10)")):
        await run_op("zip_extract", {"path": "many.zip", "max_entries": 10}, ctx)
    (root / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(
        InvalidInputError, match=re.escape("path: 'broken.zip' is not a readable zip archive")
    ):
        await run_op("zip_list", {"path": "broken.zip"}, ctx)
    assert not (root / "zeros.bin").exists() and not (root / "link").exists()


async def test_extract_into_a_symlink_that_leads_outside_is_refused(root: Path) -> None:
    ctx = ctx_for(root.parent)
    await run_op("zip_create", {"path": "r.zip", "sources": ["top.txt"]}, ctx)
    await run_op("tar_create", {"path": "r.tar", "sources": ["top.txt"], "compression": "none"}, ctx)
    os.symlink(root.parent / "outside", root / "door")
    with pytest.raises(PermissionDeniedError, match="destination: 'door' leads outside"):
        await run_op("zip_extract", {"path": "r.zip", "destination": "door"}, ctx)
    # A symlink planted where a member will land is replaced, never written through.
    (root / "top.txt").unlink()
    os.symlink(root.parent / "outside" / "planted.txt", root / "top.txt")
    await run_op("tar_extract", {"path": "r.tar", "overwrite": True}, ctx)
    assert not (root / "top.txt").is_symlink() and (root / "top.txt").read_text() == "top"
    assert list((root.parent / "outside").iterdir()) == []


# -- tar ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz", "none"])
async def test_tar_round_trip(root: Path, compression: str) -> None:
    ctx = ctx_for(root.parent)
    made = await run_op(
        "tar_create", {"path": "r.tar", "sources": ["reports", "top.txt"], "compression": compression}, ctx
    )
    assert made["files"] == 3 and made["bytes"] == 13
    with tarfile.open(root / "r.tar") as tar:  # the format is real: the standard library reads it
        assert {m.name for m in tar} == {
            "reports",
            "reports/2024",
            "reports/2024/b.csv",
            "reports/a.csv",
            "top.txt",
        }
        assert {m.uname for m in tar} == {""}
    listed = await run_op("tar_list", {"path": "r.tar"}, ctx)
    assert ("reports/a.csv", "file", 8) in [(e["name"], e["type"], e["size"]) for e in listed["entries"]]
    out = await run_op("tar_extract", {"path": "r.tar", "destination": "copy"}, ctx)
    assert out == {"path": "r.tar", "destination": "copy", "files": 3}
    assert tree(root / "copy") == {
        "reports/2024/b.csv": b"q\n",
        "reports/a.csv": b"x,y\n1,2\n",
        "top.txt": b"top",
    }


@pytest.mark.parametrize(
    ("member", "fragment"),
    [
        (tar_member("link", tarfile.SYMTYPE, "/etc/passwd"), "member 'link' is a symlink"),
        (tar_member("hard", tarfile.LNKTYPE, "/etc/passwd"), "member 'hard' is a hardlink"),
        (tar_member("null", tarfile.CHRTYPE), "member 'null' is a device"),
        (tar_member("pipe", tarfile.FIFOTYPE), "member 'pipe' is a fifo"),
        (tar_member("../evil.txt"), "contains '..'"),
        (tar_member("/etc/evil.txt"), "is absolute"),
    ],
)
async def test_tar_extract_refuses_links_devices_and_escapes(
    root: Path, member: tarfile.TarInfo, fragment: str
) -> None:
    ctx = ctx_for(root.parent)
    write_tar(root / "evil.tgz", [(tar_member("fine.txt"), b"ok"), (member, b"pwned")])
    listed = await run_op("tar_list", {"path": "evil.tgz"}, ctx)
    assert len(listed["entries"]) == 2  # listing is harmless and shows what is there
    before = tree(root.parent)
    with pytest.raises(OpenClawError, match=re.escape(fragment)) as err:
        await run_op("tar_extract", {"path": "evil.tgz", "destination": "x"}, ctx)
    assert isinstance(err.value, InvalidInputError | PermissionDeniedError)
    assert tree(root.parent) == before


async def test_tar_extract_bounds_and_corrupt_archives(root: Path) -> None:
    ctx = ctx_for(root.parent)
    with tarfile.open(root / "bomb.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 5_000_000
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
    assert (root / "bomb.tgz").stat().st_size < 20_000
    with pytest.raises(PayloadTooLargeError, match="unpacks to more than max_bytes"):
        await run_op("tar_extract", {"path": "bomb.tgz", "max_bytes": 1_000_000}, ctx)
    write_tar(root / "many.tgz", [(tar_member(f"f{i}"), b"") for i in range(20)])
    with pytest.raises(PayloadTooLargeError, match=re.escape("more than max_entries (5)")):
        await run_op("tar_extract", {"path": "many.tgz", "max_entries": 5}, ctx)
    (root / "junk.tgz").write_bytes(gzip.compress(b"not a tar at all" * 40))
    with pytest.raises(InvalidInputError, match=re.escape("path: 'junk.tgz'")):
        await run_op("tar_extract", {"path": "junk.tgz"}, ctx)
    with pytest.raises(NotFoundError):
        await run_op("tar_list", {"path": "none.tgz"}, ctx)
    assert not (root / "zeros.bin").exists()


# -- gzip --------------------------------------------------------------------------------------------


async def test_gzip_round_trip(root: Path) -> None:
    ctx = ctx_for(root.parent)
    (root / "big.txt").write_text("abc\n" * 10_000)
    packed = await run_op("gzip_compress", {"path": "big.txt", "level": 9}, ctx)
    assert packed["path"] == "big.txt.gz" and packed["original_size"] == 40_000 and packed["size"] < 1000
    assert gzip.decompress((root / "big.txt.gz").read_bytes()) == b"abc\n" * 10_000
    with pytest.raises(AlreadyExistsError):
        await run_op("gzip_compress", {"path": "big.txt"}, ctx)
    unpacked = await run_op("gzip_decompress", {"path": "big.txt.gz", "destination": "again.txt"}, ctx)
    assert unpacked == {"path": "again.txt", "size": 40_000, "compressed_size": packed["size"]}
    (root / "big.txt").unlink()
    assert (await run_op("gzip_decompress", {"path": "big.txt.gz"}, ctx))["path"] == "big.txt"
    assert (root / "big.txt").read_text() == (root / "again.txt").read_text()


async def test_gzip_decompress_refuses_bombs_and_bad_input(root: Path) -> None:
    ctx = ctx_for(root.parent)
    (root / "bomb.gz").write_bytes(gzip.compress(b"\0" * 5_000_000))
    with pytest.raises(
        PayloadTooLargeError, match=re.escape("decompresses to more than max_bytes (1000000)")
    ):
        await run_op("gzip_decompress", {"path": "bomb.gz", "max_bytes": 1_000_000}, ctx)
    assert not (root / "bomb").exists() and not hidden(root)
    (root / "plain.gz").write_text("not gzip")
    with pytest.raises(InvalidInputError, match=re.escape("path: 'plain.gz' is not valid gzip data")):
        await run_op("gzip_decompress", {"path": "plain.gz"}, ctx)
    with pytest.raises(InvalidInputError, match="destination: required"):
        await run_op("gzip_decompress", {"path": "top.txt"}, ctx)
    with pytest.raises(ValidationError, match="level"):
        await run_op("gzip_compress", {"path": "top.txt", "level": 12}, ctx)
