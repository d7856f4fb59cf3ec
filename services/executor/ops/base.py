"""What an operation is, and the catalogue that holds them by name and category."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from services.common.errors import InvalidInputError, PermissionDeniedError
from services.executor.context import OpContext

P = TypeVar("P", bound=BaseModel)


def scoped_credential(
    ctx: OpContext,
    name: str,
    *,
    host: str | None = None,
    bucket: str | None = None,
    key: str | None = None,
    param: str = "key",
) -> Mapping[str, str]:
    """The named credential set, if this step's tenant may use it for this host, bucket or object key.

    A set's optional ``tenants``, ``hosts``, ``buckets`` and ``prefixes`` (of object keys; comma-separated,
    see the executor's settings) limit it; a key that is absent means no limit. Errors name the set and the
    refused use, never a secret.
    """
    credential = ctx.services.credential(name)
    tenants = _scope(credential, "tenants")
    if tenants is not None and ctx.tenant not in tenants:
        raise PermissionDeniedError(
            f"auth: credential set {name!r} may not be used by tenant {ctx.tenant!r}",
            auth=name,
            tenant=ctx.tenant,
        )
    hosts = _scope(credential, "hosts")
    if host is not None and hosts is not None and _host(host) not in {_host(h) for h in hosts}:
        raise PermissionDeniedError(
            f"auth: credential set {name!r} may not be sent to host {host!r}", auth=name, host=host
        )
    buckets = _scope(credential, "buckets")
    if bucket is not None and buckets is not None and bucket not in buckets:
        raise PermissionDeniedError(
            f"auth: credential set {name!r} may not be used for bucket {bucket!r}", auth=name, bucket=bucket
        )
    prefixes = _scope(credential, "prefixes")
    if key is not None and prefixes is not None and not key.startswith(tuple(prefixes)):
        raise PermissionDeniedError(
            f"{param}: credential set {name!r} may only be used for keys under {sorted(prefixes)}, not {key!r}",
            auth=name,
            param=param,
        )
    return credential


def _host(name: str) -> str:
    return name.lower().rstrip(".")


def _scope(credential: Mapping[str, str], key: str) -> frozenset[str] | None:
    raw = credential.get(key)
    return None if raw is None else frozenset(item.strip() for item in raw.split(","))


def input_or_prev(p: BaseModel, field: str, ctx: OpContext) -> Any:
    """The param if the step set it, else the previous step's output (the pipeline convenience)."""
    if field in p.model_fields_set:
        return getattr(p, field)
    if ctx.has_prev:
        return ctx.prev_output
    raise InvalidInputError(f"{field}: required (and there is no previous step output to use)", param=field)


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
        doc = " ".join((fn.__doc__ or "").split())  # docstrings wrap; descriptions are one line
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
