"""The one error-to-status mapping (sidecar.rpc.errors imports no protobuf)."""

from __future__ import annotations

import logging

import grpc
import pytest

from sidecar import errors
from sidecar.rpc.errors import STATUS, to_status


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
