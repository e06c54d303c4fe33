"""The one error-to-status mapping (sidecar.rpc.errors imports no protobuf), and the
statuses a real server answers through it."""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Any

import grpc
import make_models
import pytest
from conftest import ServerProcess
from helpers import control_stub_for, status_of, stub
from tritonclient.grpc import service_pb2 as pb

from sidecar import errors
from sidecar.rpc.auth import BearerTokenInterceptor
from sidecar.rpc.errors import STATUS, to_status
from sidecar.rpc.proto import control_pb2 as cpb


def test_every_error_class_has_a_status() -> None:
    """Each SidecarError subclass maps to a status other than UNKNOWN."""
    for cls in errors.SidecarError.__subclasses__():
        assert cls in STATUS, cls.__name__


def test_sidecar_error_keeps_its_message() -> None:
    """A SidecarError's one-line message reaches the client as is."""
    code, message = to_status(errors.InvalidInputError("input 'X' is wrong"), "ModelInfer")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message == "input 'X' is wrong"


def test_unexpected_error_is_internal_generic_and_logged(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    """An unexpected exception: INTERNAL, a generic message with a reference, and the
    full exception in the log under that reference; its text never reaches the client."""
    with caplog.at_level(logging.ERROR, logger="sidecar.rpc"):
        code, message = to_status(KeyError("/secret/path"), "ModelInfer")
    assert code == grpc.StatusCode.INTERNAL
    assert "secret" not in message and "internal error" in message
    (record,) = caplog.records
    assert record.exc_info is not None and record.ref in message  # type: ignore[attr-defined]


# --- statuses answered through the map, on a real server ---------------------

SIDECAR = Path(errors.__file__).parent
#: Client-side modules (they read statuses: the CLI, the probe, the etcd client) and
#: generated code.
_NOT_SERVER = {SIDECAR / "ctl.py", SIDECAR / "probe.py", SIDECAR / "rpc" / "errors.py",
               SIDECAR / "fleet" / "etcd.py"}
_GENERATED = (SIDECAR / "rpc" / "proto", SIDECAR / "fleet" / "proto")


def test_only_the_map_names_a_status_code() -> None:
    """No server module picks a gRPC status itself: each one raises a SidecarError
    and sidecar.rpc.errors maps it (auth refusals and UNIMPLEMENTED included)."""
    offenders = []
    for path in sorted(SIDECAR.rglob("*.py")):
        if path in _NOT_SERVER or any(g in path.parents for g in _GENERATED):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "StatusCode"):
                offenders.append(f"{path.relative_to(SIDECAR)}:{node.lineno} {node.attr}")
    assert offenders == []


def test_bearer_token_refusals_are_sidecar_errors() -> None:
    """The interceptor's check raises the error classes the map turns into
    UNAUTHENTICATED (no or malformed header) and PERMISSION_DENIED (wrong token)."""
    check = BearerTokenInterceptor("s3cret").check
    cases = [
        ((), errors.UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Basic s3cret"),), errors.UnauthenticatedError,
         grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer guess"),), errors.PermissionDeniedError,
         grpc.StatusCode.PERMISSION_DENIED),
    ]
    for metadata, cls, code in cases:
        with pytest.raises(cls) as err:
            check(metadata)
        assert to_status(err.value, "Status")[0] == code
    check((("authorization", "Bearer s3cret"),))  # accepted: no error


def _control_repo(root: Path) -> Path:
    make_models.write_model(make_models.tiny_model(1), root, "tiny", 1)
    return root


@pytest.fixture
def token_server(start_server: Any, tmp_path: Path) -> ServerProcess:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    srv: ServerProcess = start_server(_control_repo(tmp_path / "repo"),
                                      "--control-token-file", str(token_file))
    return srv


_MISSING = ("missing bearer token: send metadata 'authorization: Bearer <token>'"
            " (sidecar ctl: --token-file or SIDECAR_CTL_TOKEN_FILE)")
_UNIMPLEMENTED = "SystemSharedMemoryStatus: system shared memory is not supported"


def test_unauthenticated_control_calls_get_the_mapped_status(token_server: ServerProcess
                                                             ) -> None:
    """On the control port with a token set: a call without it is UNAUTHENTICATED with
    the UnauthenticatedError's message, for unary and streaming control RPCs and for
    the inference service there alike; a malformed header too; a wrong token is
    PERMISSION_DENIED; the right one passes."""
    with grpc.insecure_channel(token_server.control_address) as channel:
        control = control_stub_for(channel)
        inference = stub(channel)
        code, message = status_of(lambda: control.Status(cpb.StatusRequest(), timeout=10))
        assert (code, message) == ("UNAUTHENTICATED", _MISSING)
        code, message = status_of(lambda: list(control.WatchEvents(
            cpb.WatchEventsRequest(), timeout=10)))
        assert (code, message) == ("UNAUTHENTICATED", _MISSING)
        code, message = status_of(lambda: inference.RepositoryIndex(
            pb.RepositoryIndexRequest(), timeout=10))
        assert (code, message) == ("UNAUTHENTICATED", _MISSING)
        code, message = status_of(lambda: control.Status(
            cpb.StatusRequest(), timeout=10, metadata=[("authorization", "Basic x")]))
        assert (code, message) == (
            "UNAUTHENTICATED", "malformed authorization header: expected 'Bearer <token>'")
        code, message = status_of(lambda: control.Status(
            cpb.StatusRequest(), timeout=10, metadata=[("authorization", "Bearer guess")]))
        assert (code, message) == ("PERMISSION_DENIED", "bearer token not accepted")
        reply = control.Status(cpb.StatusRequest(), timeout=10,
                               metadata=[("authorization", "Bearer s3cret-token")])
        assert reply.ready


def test_unimplemented_rpcs_get_the_mapped_status(token_server: ServerProcess) -> None:
    """The optional RPCs answer UNIMPLEMENTED with the UnimplementedError's message on
    both ports; on a token-protected control port the token is checked first. A
    method no service has is grpc's own UNIMPLEMENTED (no handler to map from)."""
    auth = [("authorization", "Bearer s3cret-token")]
    request = pb.SystemSharedMemoryStatusRequest()
    with grpc.insecure_channel(token_server.address) as channel:
        code, message = status_of(lambda: stub(channel).SystemSharedMemoryStatus(
            request, timeout=10))
        assert (code, message) == ("UNIMPLEMENTED", _UNIMPLEMENTED)
    with grpc.insecure_channel(token_server.control_address) as channel:
        inference = stub(channel)
        code, _ = status_of(lambda: inference.SystemSharedMemoryStatus(request, timeout=10))
        assert code == "UNAUTHENTICATED"
        code, message = status_of(lambda: inference.SystemSharedMemoryStatus(
            request, timeout=10, metadata=auth))
        assert (code, message) == ("UNIMPLEMENTED", _UNIMPLEMENTED)
        for name, what in [("CudaSharedMemoryRegister", "CUDA shared memory"),
                           ("TraceSetting", "tracing"), ("LogSettings", "changing log settings")]:
            method, empty = getattr(inference, name), getattr(pb, f"{name}Request")()
            code, message = status_of(
                lambda method=method, empty=empty: method(empty, timeout=10, metadata=auth))
            assert (code, message) == ("UNIMPLEMENTED", f"{name}: {what} is not supported")
        nosuch = channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")
        code, _ = status_of(lambda: nosuch(b"", timeout=10))
        assert code == "UNIMPLEMENTED"
