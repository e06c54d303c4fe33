"""The one mapping from `sidecar.errors` to gRPC status codes.

`guarded` wraps every unary servicer method (the optional RPCs answered
UNIMPLEMENTED included): a `SidecarError` becomes its status with the error's
one-line message; any other exception is a bug, logged in full with a
reference and answered INTERNAL with a generic message that carries the same
reference (never the exception text: it may leak paths). The streaming
methods and the control server's bearer-token interceptor call `to_status`
themselves. No other server module names a status code.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import grpc

from sidecar import errors
from sidecar.rpc.decoding import refuse_undecodable

log = logging.getLogger("sidecar.rpc")

STATUS: Final[dict[type[errors.SidecarError], grpc.StatusCode]] = {
    errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ModelLoadError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ModelExecutionError: grpc.StatusCode.INTERNAL,
    errors.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    errors.UnimplementedError: grpc.StatusCode.UNIMPLEMENTED,
    errors.DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(exc: errors.SidecarError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = STATUS.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.UNKNOWN


def describe_unexpected(exc: BaseException, method: str) -> str:
    """Log an unexpected exception in full; return the generic message for the client."""
    ref = uuid.uuid4().hex[:12]
    log.error("unexpected error", exc_info=exc, extra={"method": method, "ref": ref})
    return f"internal error (ref {ref}); see the server log"


#: Longest message a client gets: an error that quotes what the client sent (a
#: 20 KB model name) must not outgrow the status header and kill the stream.
MAX_MESSAGE = 1000


def bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE:
        return message
    return message[:MAX_MESSAGE - 20] + f"... ({len(message)} characters)"


def to_status(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, errors.SidecarError):
        return status_of(exc), bounded(str(exc))
    return grpc.StatusCode.INTERNAL, describe_unexpected(exc, method)


T = TypeVar("T")
Method = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[T]]


def guarded(method: Method[T]) -> Method[T]:
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            refuse_undecodable(request)
            return await method(self, request, context)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code, message = to_status(exc, name)
            await context.abort(code, message)
            raise  # unreachable: abort raises

    return wrapper
