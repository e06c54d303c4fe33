"""Bearer-token check for the control server, and TLS credentials.

Every call to the control server must carry `authorization: Bearer <token>`
when a token is configured. No or malformed header: `UnauthenticatedError`
(UNAUTHENTICATED); a wrong token: `PermissionDeniedError` (PERMISSION_DENIED).
The status comes from the one error map, `sidecar.rpc.errors`. Tokens are
compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from sidecar.errors import PermissionDeniedError, SidecarError, UnauthenticatedError
from sidecar.rpc.errors import to_status

_SCHEME = "bearer "


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def check(self, metadata: tuple[tuple[str, Any], ...]) -> None:
        """Return if the call may proceed; else raise the error that refuses it."""
        header = next((v for k, v in metadata if k == "authorization"), None)
        if header is None:
            raise UnauthenticatedError(
                "missing bearer token: send metadata 'authorization: Bearer <token>'"
                " (sidecar ctl: --token-file or SIDECAR_CTL_TOKEN_FILE)")
        text = header.decode() if isinstance(header, bytes) else str(header)
        if not text.lower().startswith(_SCHEME) or not text[len(_SCHEME):].strip():
            raise UnauthenticatedError("malformed authorization header: expected 'Bearer <token>'")
        given = text[len(_SCHEME):].strip().encode()
        if not hmac.compare_digest(given, self._token):
            raise PermissionDeniedError("bearer token not accepted")

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None  # no such method: grpc answers UNIMPLEMENTED itself
        try:
            self.check(tuple(details.invocation_metadata or ()))
        except SidecarError as exc:
            return _refusing(handler, *to_status(exc, details.method))
        return handler


def _refusing(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same kind as `handler` that aborts with (code, message)."""

    async def unary(request: Any, context: Any) -> None:
        await context.abort(code, message)

    async def streaming(request: Any, context: Any) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    # No deserializer: the refused request is never read, so a payload that does
    # not even parse is refused for its missing token first.
    return make(streaming if handler.response_streaming else unary,
                request_deserializer=None,
                response_serializer=handler.response_serializer)


def read_token(token_file: str, env_token: str) -> str:
    """The configured token: from the file (stripped), else the variable, else ""."""
    if token_file:
        token = Path(token_file).read_text().strip()
        if not token:
            raise ValueError(f"token file {token_file} is empty")
        return token
    return env_token.strip()


def server_credentials(cert: str, key: str, client_ca: str = "") -> Any:
    """TLS credentials; with `client_ca`, client certificates are required (mTLS)."""
    if bool(cert) != bool(key):
        raise ValueError("TLS needs both a certificate and a key")
    pair = (Path(key).read_bytes(), Path(cert).read_bytes())
    ca = Path(client_ca).read_bytes() if client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca,
                                       require_client_auth=ca is not None)
