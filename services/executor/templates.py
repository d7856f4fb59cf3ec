"""The template library: preset workflows shipped as JSON files in ``template_library/``, run by name."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

from services.common.errors import NotFoundError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_PACKAGE = "services.executor"


def _folder() -> Any:
    return resources.files(_PACKAGE).joinpath("template_library")


def list_templates() -> list[str]:
    """Names of the shipped templates."""
    folder = _folder()
    if not folder.is_dir():  # an install that left the JSON files out (package data)
        return []
    return sorted(
        entry.name.removesuffix(".json")
        for entry in folder.iterdir()
        if entry.name.endswith(".json") and _NAME.match(entry.name.removesuffix(".json"))
    )


def load_template(name: str) -> dict[str, Any]:
    """The workflow document of a template (a fresh copy); NotFoundError naming the known ones."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise NotFoundError(f"template: no template named {name!r}; known: {', '.join(list_templates())}")
    entry = _folder().joinpath(f"{name}.json")
    if not entry.is_file():
        raise NotFoundError(f"template: no template named {name!r}; known: {', '.join(list_templates())}")
    doc: dict[str, Any] = json.loads(entry.read_text(encoding="utf-8"))
    return doc
