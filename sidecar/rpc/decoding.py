"""Requests that do not parse are the client's error, answered in one line;
the registration of services (with answers already serialized, where a
servicer says so).

grpc deserialises a request before any servicer code runs, and a payload that
is not the method's message (random bytes, another message) is logged by grpc
at error level with a traceback and answered UNKNOWN: log flooding by anyone.
`add_lenient` registers a service with each method's deserializer wrapped so
that such a payload becomes an `Undecodable` value instead; `guarded` (rpc/errors.py) and the
streaming methods turn it into INVALID_ARGUMENT without a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
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


class LenientRegistration:
    """Stands in for the server while a generated `add_*Servicer_to_server` runs:
    the method handlers it registers get lenient deserializers, wrapped once
    here rather than by an interceptor on every call (grpc.aio runs each
    interceptor as a coroutine per call, and loses its fast method lookup)."""

    def __init__(self, server: Any, raw_responses: frozenset[str] = frozenset()) -> None:
        self._server = server
        self._raw_responses = raw_responses

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # rebuilt from the registered handlers below

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        lenient = {
            name: handler._replace(request_deserializer=_lenient(
                f"/{service}/{name}", handler.request_deserializer))
            if handler.request_deserializer is not None else handler
            for name, handler in handlers.items()
        }
        for name in self._raw_responses & lenient.keys():
            # The servicer answers wire bytes: grpc sends them as they are.
            lenient[name] = lenient[name]._replace(response_serializer=None)
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, lenient),))
        self._server.add_registered_method_handlers(service, lenient)


def add_lenient(add: Callable[[Any, Any], None], servicer: Any, server: Any) -> None:
    """`add(servicer, server)` (a generated registration), with lenient decoding.
    Methods the servicer lists in `RAW_RESPONSES` answer serialized messages."""
    add(servicer, LenientRegistration(server, getattr(servicer, "RAW_RESPONSES", frozenset())))
