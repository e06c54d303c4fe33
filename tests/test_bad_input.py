"""Bad input gets a precise status naming what is wrong, and the server keeps serving."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import ServerProcess
from helpers import client, infer_input, raw_request, status_of, stub, tiny_expected
from tritonclient.grpc import service_pb2 as pb

X = np.ones((1, 4), np.float32)


@pytest.fixture(autouse=True)
def still_serving(server: ServerProcess) -> Iterator[None]:
    """After every bad request, a good one is still answered correctly."""
    yield
    result = client(server.address).infer("tiny", [infer_input("INPUT0", X, "FP32")])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), tiny_expected(X, 2), rtol=1e-5)


def _send(server: ServerProcess, request: pb.ModelInferRequest) -> tuple[str, str]:
    with server.channel() as channel:
        return status_of(lambda: stub(channel).ModelInfer(request, timeout=10))


def test_unknown_model_is_not_found(server: ServerProcess) -> None:
    """A model that does not exist: NOT_FOUND naming it."""
    code, message = _send(server, raw_request("nosuch", [("INPUT0", "FP32", X)]))
    assert code == "NOT_FOUND" and "'nosuch'" in message


def test_unknown_version_is_not_found(server: ServerProcess) -> None:
    """A version that is not on disk: NOT_FOUND naming model and version."""
    code, message = _send(server, raw_request("tiny", [("INPUT0", "FP32", X)],
                                              model_version="9"))
    assert code == "NOT_FOUND" and "'tiny'" in message and "'9'" in message


def test_version_on_disk_but_not_loaded_is_unavailable(server: ServerProcess) -> None:
    """Version 1 of trio exists but is not loaded: UNAVAILABLE with its state."""
    code, message = _send(server, raw_request("trio", [("INPUT0", "FP32", X)],
                                              model_version="1"))
    assert code == "UNAVAILABLE" and "version 1" in message and "UNLOADED" in message


def test_non_numeric_version_is_not_found(server: ServerProcess) -> None:
    """A version that is not a positive integer cannot exist."""
    code, message = _send(server, raw_request("tiny", [("INPUT0", "FP32", X)],
                                              model_version="latest"))
    assert code == "NOT_FOUND" and "'latest'" in message


def test_wrong_input_name(server: ServerProcess) -> None:
    """An input the model does not have: INVALID_ARGUMENT naming it and the real ones."""
    code, message = _send(server, raw_request("tiny", [("WRONG", "FP32", X)]))
    assert code == "INVALID_ARGUMENT"
    assert "'WRONG'" in message and "INPUT0" in message and "'tiny'" in message


def test_missing_input(server: ServerProcess) -> None:
    """A required input not sent: INVALID_ARGUMENT naming it."""
    code, message = _send(server, pb.ModelInferRequest(model_name="tiny"))
    assert code == "INVALID_ARGUMENT" and "INPUT0" in message and "missing" in message


def test_extra_input(server: ServerProcess) -> None:
    """An input beyond the signature: INVALID_ARGUMENT naming it."""
    code, message = _send(server, raw_request(
        "tiny", [("INPUT0", "FP32", X), ("EXTRA", "FP32", X)]))
    assert code == "INVALID_ARGUMENT" and "'EXTRA'" in message


def test_duplicate_input(server: ServerProcess) -> None:
    """The same input twice: INVALID_ARGUMENT."""
    code, message = _send(server, raw_request(
        "tiny", [("INPUT0", "FP32", X), ("INPUT0", "FP32", X)]))
    assert code == "INVALID_ARGUMENT" and "twice" in message


def test_wrong_datatype(server: ServerProcess) -> None:
    """FP64 sent where FP32 is expected: INVALID_ARGUMENT with both types."""
    code, message = _send(server, raw_request("tiny", [("INPUT0", "FP64", X.astype("f8"))]))
    assert code == "INVALID_ARGUMENT" and "FP32" in message and "FP64" in message


def test_unknown_datatype(server: ServerProcess) -> None:
    """A datatype name that does not exist: INVALID_ARGUMENT naming it."""
    code, message = _send(server, raw_request("tiny", [("INPUT0", "FLOAT", X)]))
    assert code == "INVALID_ARGUMENT" and "'FLOAT'" in message


def test_shape_that_does_not_fit(server: ServerProcess) -> None:
    """[1,5] for a [-1,4] input: INVALID_ARGUMENT with expected and received shapes."""
    x = np.ones((1, 5), np.float32)
    code, message = _send(server, raw_request("tiny", [("INPUT0", "FP32", x)]))
    assert code == "INVALID_ARGUMENT" and "[-1, 4]" in message and "[1, 5]" in message


def test_wrong_rank(server: ServerProcess) -> None:
    """A rank-1 tensor for a rank-2 input: INVALID_ARGUMENT."""
    x = np.ones(4, np.float32)
    code, message = _send(server, raw_request("tiny", [("INPUT0", "FP32", x)]))
    assert code == "INVALID_ARGUMENT" and "[4]" in message


def test_negative_dimension(server: ServerProcess) -> None:
    """A negative dimension in the request's shape: INVALID_ARGUMENT."""
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[-1, 4])
    request.raw_input_contents.append(X.tobytes())
    code, message = _send(server, request)
    assert code == "INVALID_ARGUMENT" and "negative" in message


def test_byte_count_that_does_not_match_the_shape(server: ServerProcess) -> None:
    """12 bytes for a [1,4] FP32 tensor: INVALID_ARGUMENT with both sizes."""
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(X.tobytes()[:12])
    code, message = _send(server, request)
    assert code == "INVALID_ARGUMENT"
    assert "INPUT0" in message and "12 bytes" in message and "16" in message


def test_raw_entry_count_must_match_inputs(server: ServerProcess) -> None:
    """Two raw entries for one input: INVALID_ARGUMENT."""
    request = raw_request("tiny", [("INPUT0", "FP32", X)])
    request.raw_input_contents.append(X.tobytes())
    code, message = _send(server, request)
    assert code == "INVALID_ARGUMENT" and "raw_input_contents" in message


def test_mixed_raw_and_typed_contents(server: ServerProcess) -> None:
    """Typed contents in a request that uses raw contents: INVALID_ARGUMENT."""
    request = raw_request("tiny", [("INPUT0", "FP32", X)])
    request.inputs[0].contents.fp32_contents.extend([1, 2, 3, 4])
    code, message = _send(server, request)
    assert code == "INVALID_ARGUMENT" and "one form" in message


def test_typed_count_that_does_not_match_the_shape(server: ServerProcess) -> None:
    """Three typed values for a [1,4] tensor: INVALID_ARGUMENT."""
    request = pb.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1, 2, 3])
    code, message = _send(server, request)
    assert code == "INVALID_ARGUMENT" and "3 elements" in message and "4" in message


def test_typed_values_in_the_wrong_field(server: ServerProcess) -> None:
    """FP32 data in int_contents: INVALID_ARGUMENT naming the right field."""
    request = pb.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    tensor.contents.int_contents.extend([1, 2, 3, 4])
    code, message = _send(server, request)
    assert code == "INVALID_ARGUMENT" and "fp32_contents" in message


def test_typed_value_out_of_range(server: ServerProcess) -> None:
    """300 in int_contents for an INT8 input: INVALID_ARGUMENT naming the range."""
    request = pb.ModelInferRequest(model_name="int8")
    tensor = request.inputs.add(name="IN", datatype="INT8", shape=[2])
    tensor.contents.int_contents.extend([1, 300])
    code, message = _send(server, request)
    assert code == "INVALID_ARGUMENT" and "INT8" in message and "127" in message


def test_fp16_has_no_typed_form(server: ServerProcess) -> None:
    """FP16 cannot travel typed: INVALID_ARGUMENT saying to send it raw."""
    request = pb.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="INPUT0", datatype="FP16", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1, 2, 3, 4])
    code, message = _send(server, request)
    assert code == "INVALID_ARGUMENT" and "raw" in message


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (struct.pack("<I", 5) + b"abc", "declares 5 bytes"),
        (b"\x01\x00", "inside the length prefix"),
        (struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b" + b"zz", "left over"),
    ],
    ids=["length-past-end", "truncated-prefix", "trailing-bytes"],
)
def test_malformed_bytes_prefixes(server: ServerProcess, payload: bytes, needle: str) -> None:
    """BYTES contents whose length prefixes do not parse exactly: INVALID_ARGUMENT."""
    count = 1 if needle != "left over" else 2
    request = pb.ModelInferRequest(model_name="text")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[count])
    request.raw_input_contents.append(payload)
    code, message = _send(server, request)
    assert code == "INVALID_ARGUMENT" and needle in message and "TEXT" in message


def test_bytes_that_are_not_utf8_for_a_string_model(server: ServerProcess) -> None:
    """ONNX string tensors hold text: invalid UTF-8 is INVALID_ARGUMENT, not garbage."""
    request = pb.ModelInferRequest(model_name="text")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(struct.pack("<I", 2) + b"\xff\xfe")
    code, message = _send(server, request)
    assert code == "INVALID_ARGUMENT" and "UTF-8" in message


def test_unknown_requested_output(server: ServerProcess) -> None:
    """An output the model does not have: INVALID_ARGUMENT naming it and the real ones."""
    request = raw_request("tiny", [("INPUT0", "FP32", X)])
    request.outputs.add(name="NOPE")
    code, message = _send(server, request)
    assert code == "INVALID_ARGUMENT" and "'NOPE'" in message and "OUTPUT0" in message


def test_oversized_message_is_resource_exhausted(start_server, standard_repo) -> None:  # type: ignore[no-untyped-def]
    """A request above --max-message-mb: RESOURCE_EXHAUSTED; the server keeps serving."""
    small = start_server(standard_repo, "--max-message-mb", "1")
    big = np.ones((70_000, 4), np.float32)  # ~1.1 MB of raw contents
    with small.channel(**{"grpc.max_send_message_length": 64 << 20}) as channel:
        code, message = status_of(lambda: stub(channel).ModelInfer(
            raw_request("tiny", [("INPUT0", "FP32", big)]), timeout=10))
    assert code == "RESOURCE_EXHAUSTED" and "larger than max" in message
    result = client(small.address).infer("tiny", [infer_input("INPUT0", X, "FP32")])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), tiny_expected(X, 2), rtol=1e-5)


def test_large_message_within_the_limit_is_served(server: ServerProcess) -> None:
    """A 16 MiB request (four times grpc's default limit) is served by default."""
    big = np.ones((1 << 20, 4), np.float32)
    c = client(server.address, channel_args=[("grpc.max_send_message_length", 64 << 20),
                                              ("grpc.max_receive_message_length", 64 << 20)])
    result = c.infer("tiny", [infer_input("INPUT0", big, "FP32")])
    assert result.as_numpy("OUTPUT0").shape == (1 << 20, 3)
