"""gRPC helpers shared by every server and client: health, reflection, trace metadata, errors as status."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.common import errors, telemetry

_ERROR_KEY = "openclaw-error"
_log = logging.getLogger(__name__)
_tracer = trace.get_tracer("openclaw.rpc")


def add_health_and_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> health.HealthServicer:
    """Serve grpc.health.v1 and server reflection beside the given services; all start SERVING."""
    servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in [*service_names, ""]:
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    return servicer


def set_not_serving(servicer: health.HealthServicer, service_names: Sequence[str]) -> None:
    """Tell probes and load balancers to stop sending work (first step of a drain)."""
    for name in [*service_names, ""]:
        servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


def outgoing_metadata(*extra: tuple[str, str]) -> list[tuple[str, str]]:
    """Metadata for an outgoing call: the current trace context plus extra pairs."""
    return [*((k, str(v)) for k, v in telemetry.inject().items()), *extra]


@contextmanager
def server_span(
    context: grpc.aio.ServicerContext[Any, Any], method: str, service: str
) -> Iterator[trace.Span]:
    """A SERVER span continuing the caller's trace from the call's metadata."""
    parent = telemetry.extract(dict(context.invocation_metadata() or ()))
    with telemetry.span(
        _tracer,
        f"{service}/{method}",
        parent=parent,
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
    ) as span:
        yield span


@asynccontextmanager
async def serving(
    context: grpc.aio.ServicerContext[Any, Any], method: str, service: str
) -> AsyncIterator[trace.Span]:
    """A handler's server span, with every error ending the call as data: ours with its own status, anything
    unexpected logged and sent as ``internal`` (never a bare UNKNOWN with a Python traceback text)."""
    with server_span(context, method, service) as span:
        try:
            yield span
        except grpc.aio.AbortError:
            raise  # the handler already ended the call
        except errors.OpenClawError as exc:
            await abort(context, exc)
        except Exception as exc:
            _log.exception("%s failed", method)
            await abort(context, errors.OpenClawError(f"internal error: {type(exc).__name__}"))


async def abort(context: grpc.aio.ServicerContext[Any, Any], err: errors.OpenClawError) -> NoReturn:
    """End the call with err's status code; the error's wire form travels in trailing metadata."""
    span = trace.get_current_span()
    span.set_status(Status(StatusCode.ERROR, err.message))
    context.set_trailing_metadata(((_ERROR_KEY, json.dumps(err.to_dict(), default=str)),))
    await context.abort(err.grpc_status, err.message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


def error_from_rpc(exc: grpc.aio.AioRpcError) -> errors.OpenClawError:
    """Rebuild the remote error from a failed call (our trailing metadata if present, else the status)."""
    for item in exc.trailing_metadata() or ():
        key, value = str(item[0]), item[1]  # type: ignore[index]
        if key == _ERROR_KEY:
            try:
                data: dict[str, Any] = json.loads(value if isinstance(value, str) else bytes(value).decode())
                return errors.from_dict(data)
            except (ValueError, AttributeError):
                break
    return errors.from_grpc(exc.code(), exc.details() or "")
