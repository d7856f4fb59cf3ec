"""The container image: the Dockerfile's stages, user and protoc step, and what .dockerignore keeps."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import sys
from pathlib import Path

from tests.unit.deploy._helpers import ROOT, run

PROTOC = (
    "python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. "
    "proto/openclaw/v1/*.proto"
)


def test_dockerfile_builds_one_non_root_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    stages: list[str] = []
    for base, alias in re.findall(r"^FROM (\S+)(?: AS (\S+))?$", text, re.M):
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert image == "python:3.11-slim" or image in stages, image
        stages.append(alias)
    assert re.findall(r"^USER (\S+)$", text, re.M)[-1] == "10001:10001"
    assert PROTOC in text and "pip install --no-deps ." in text
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for item in source.split():
            assert (ROOT / item).exists(), f"COPY {item}: no such file"


def test_dockerignore_keeps_the_sources_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and line[0] != "#"
    ]
    assert not any(p.startswith("!") for p in patterns), "this check does not model exceptions"

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch.fnmatch(prefix, p.removeprefix("**/")) for prefix in prefixes for p in patterns)

    for kept in ("pyproject.toml", "README.md", "proto/openclaw/v1/router.proto", "openclaw/__init__.py"):
        assert not ignored(kept), kept
    assert not ignored("services/__init__.py")
    for dropped in (".venv", ".git", "openclaw/v1/router_pb2.py", "openclaw/v1/router_pb2_grpc.py", "tests"):
        assert ignored(dropped), dropped


def test_dockerfile_protoc_step_compiles_the_protos(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    args = shlex.split(PROTOC)
    args = [sys.executable if a == "python" else a for a in args if "*" not in a]
    protos = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "proto").rglob("*.proto"))
    assert protos
    run(*args, *protos, cwd=tmp_path)
    for proto in protos:
        stem = Path(proto).relative_to("proto").with_suffix("")
        for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"):
            assert (tmp_path / f"{stem}{suffix}").is_file(), f"{stem}{suffix}"
