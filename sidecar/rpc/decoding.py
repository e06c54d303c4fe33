"""Requests that do not parse are the client's error, answered in one line.

grpc deserialises a request before any servicer code runs, and a payload that
is not the method's message (random bytes, another message) is logged by grpc
at error level with a traceback and answered UNKNOWN: log flooding by anyone.
`LenientDecoding` wraps each method's deserializer so that such a payload
becomes an `Undecodable` value instead; `guarded` (rpc/errors.py) and the
streaming methods turn it into INVALID_ARGUMENT without a traceback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from sidecar.errors import InvalidInputError


class Undecodable:
    """A request payload its method's deserializer refused."""

    __slots__ = ("method", "size")

    def __init__(self, method: str, size: int) -> None:
        self.method = method
        self.size = size

    def error(self) -> InvalidInputError:
        name = self.method.rsplit("/", 1)[-1]
        return InvalidInputError(f"the request ({self.size} bytes) is not a valid {name}"
                                 " message")


def refuse_undecodable(request: Any) -> None:
    if isinstance(request, Undecodable):
        raise request.error()


def _lenient(method: str, deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # protobuf's DecodeError, and anything a parser may raise
            return Undecodable(method, len(data))
    return decode


#: The services whose methods check for `Undecodable` (guarded, streams).
_OURS = ("/inference.GRPCInferenceService/", "/sidecar.control.v1.ModelControl/")


class LenientDecoding(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None \
                or not details.method.startswith(_OURS):
            return handler  # health and reflection: their servicers read requests
        return handler._replace(
            request_deserializer=_lenient(details.method, handler.request_deserializer))
