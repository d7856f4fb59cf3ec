"""What an operation is, and the catalogue that holds them by name and category."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from services.executor.context import OpContext

P = TypeVar("P", bound=BaseModel)


class Params(BaseModel):
    """Base of every operation's params model: unknown params are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Operation(Generic[P]):
    """A named, typed operation: validated params in, a JSON value out."""

    name: str
    category: str
    description: str
    params: type[P]
    run: Callable[[P, OpContext], Awaitable[Any]]

    def describe(self) -> dict[str, Any]:
        """Name, category, description and params JSON Schema (docs, ``openclaw ops list``)."""
        return {
            "name": self.name,
            "category": self.category,
            "description": self.description,
            "params": self.params.model_json_schema(),
        }


def operation(
    name: str, *, category: str, params: type[P]
) -> Callable[[Callable[[P, OpContext], Awaitable[Any]]], Operation[P]]:
    """Declare an operation; the function's docstring is its description."""

    def wrap(fn: Callable[[P, OpContext], Awaitable[Any]]) -> Operation[P]:
        doc = (fn.__doc__ or "").strip()
        return Operation(name=name, category=category, description=doc, params=params, run=fn)

    return wrap


class Catalogue(Mapping[str, Operation[Any]]):
    """Operations by name; also answers parse_workflow's params-model question."""

    def __init__(self, operations: Iterable[Operation[Any]]) -> None:
        self._ops: dict[str, Operation[Any]] = {}
        for op in operations:
            if op.name in self._ops:
                raise ValueError(f"operation {op.name!r} is defined twice")
            self._ops[op.name] = op

    def __getitem__(self, name: str) -> Operation[Any]:
        return self._ops[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def params_model(self, op_name: str) -> type[BaseModel] | None:
        op = self._ops.get(op_name)
        return op.params if op is not None else None

    def by_category(self) -> dict[str, list[Operation[Any]]]:
        out: dict[str, list[Operation[Any]]] = {}
        for op in self._ops.values():
            out.setdefault(op.category, []).append(op)
        return out

    def with_operations(self, *extra: Operation[Any]) -> Catalogue:
        """A new catalogue with more operations (plugins, tests)."""
        return Catalogue([*self._ops.values(), *extra])
