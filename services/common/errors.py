"""The shared error hierarchy: each error knows its code, HTTP/gRPC status and whether a retry may help."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import grpc

_DEFINED: dict[str, type[OpenClawError]] = {}
_REMOTE: dict[str, type[OpenClawError]] = {}
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class OpenClawError(Exception):
    """Base of every error OpenClaw raises on purpose; crosses process boundaries as data."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    grpc_status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    retryable: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            _DEFINED.setdefault(cls.code, cls)  # any module's error class can be rebuilt from its wire form

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The wire form of this error (task error records, HTTP bodies)."""
        out: dict[str, Any] = {"code": self.code, "message": self.message, "retryable": self.retryable}
        if self.details:
            out["details"] = self.details
        return out


class InvalidInputError(OpenClawError):
    """The caller sent something malformed; retrying the same input cannot help."""

    code = "invalid_input"
    http_status = 400
    grpc_status = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(OpenClawError):
    """The named thing does not exist (or belongs to another tenant, which looks the same)."""

    code = "not_found"
    http_status = 404
    grpc_status = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(OpenClawError):
    """The name is taken."""

    code = "already_exists"
    http_status = 409
    grpc_status = grpc.StatusCode.ALREADY_EXISTS


class UnauthenticatedError(OpenClawError):
    """No valid credentials."""

    code = "unauthenticated"
    http_status = 401
    grpc_status = grpc.StatusCode.UNAUTHENTICATED


class InProgressError(OpenClawError):
    """An earlier request for the same thing is still being handled; retry shortly."""

    code = "in_progress"
    http_status = 409
    grpc_status = grpc.StatusCode.ABORTED
    retryable = True


class PermissionDeniedError(OpenClawError):
    """Valid credentials, but not allowed."""

    code = "permission_denied"
    http_status = 403
    grpc_status = grpc.StatusCode.PERMISSION_DENIED


class PayloadTooLargeError(OpenClawError):
    """The body is over the configured limit."""

    code = "payload_too_large"
    http_status = 413
    grpc_status = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(OpenClawError):
    """A dependency is down or overloaded; a later retry may succeed."""

    code = "unavailable"
    http_status = 503
    grpc_status = grpc.StatusCode.UNAVAILABLE
    retryable = True


class BreakerOpenError(UnavailableError):
    """A circuit breaker refused the call without trying it."""

    code = "breaker_open"

    def __init__(self, breaker: str, retry_after: float) -> None:
        super().__init__(f"circuit breaker {breaker!r} is open", breaker=breaker, retry_after=retry_after)
        self.breaker = breaker
        self.retry_after = retry_after


class TimeoutError_(OpenClawError):
    """The work did not finish in time."""

    code = "timeout"
    http_status = 504
    grpc_status = grpc.StatusCode.DEADLINE_EXCEEDED
    retryable = True


class CallerTimeoutError(TimeoutError_):
    """The work outran a timeout the caller chose shorter than the default: it says nothing about the callee."""

    code = "timeout"


class InvalidModelOutputError(OpenClawError):
    """A model answered, but not in the shape that was asked for (even after a repair attempt)."""

    code = "invalid_model_output"
    http_status = 502
    grpc_status = grpc.StatusCode.INTERNAL


class ResourceExhaustedError(OpenClawError):
    """A limit was reached (concurrency, rate, quota); retry after a delay."""

    code = "resource_exhausted"
    http_status = 429
    grpc_status = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True


_BY_CODE: dict[str, type[OpenClawError]] = {
    cls.code: cls
    for cls in (
        OpenClawError,
        InvalidInputError,
        NotFoundError,
        AlreadyExistsError,
        InProgressError,
        UnauthenticatedError,
        PermissionDeniedError,
        PayloadTooLargeError,
        UnavailableError,
        TimeoutError_,
        ResourceExhaustedError,
        InvalidModelOutputError,
    )
}
_BY_GRPC: dict[grpc.StatusCode, type[OpenClawError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: TimeoutError_,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidInputError,
}


def from_dict(data: dict[str, Any]) -> OpenClawError:
    """Rebuild an error from its wire form; an unknown code keeps the sender's verdict on retrying."""
    code = str(data.get("code", ""))
    cls = _BY_CODE.get(code) or _DEFINED.get(code) or _remote_class(code, bool(data.get("retryable")))
    err = OpenClawError.__new__(cls)
    OpenClawError.__init__(err, str(data.get("message", "")), **dict(data.get("details") or {}))
    return err


def _remote_class(code: str, retryable: bool) -> type[OpenClawError]:
    """A class for a code this process does not know, keeping the code and the sender's verdict on retrying."""
    base: type[OpenClawError] = UnavailableError if retryable else OpenClawError
    if not _CODE.match(code):
        return base
    key = f"{code}:{retryable}"
    if key not in _REMOTE and len(_REMOTE) < 256:
        _REMOTE[key] = type(f"RemoteError_{code}", (base,), {"code": code})
    return _REMOTE.get(key, base)


def from_grpc(code: grpc.StatusCode, message: str) -> OpenClawError:
    """Translate a gRPC status received from another service into our hierarchy."""
    cls = _BY_GRPC.get(code, UnavailableError if code == grpc.StatusCode.UNKNOWN else OpenClawError)
    err = OpenClawError.__new__(cls)
    OpenClawError.__init__(err, message or code.name, grpc_code=code.name)
    return err
