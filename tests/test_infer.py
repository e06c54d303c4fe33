"""ModelInfer and ModelStreamInfer against a real server, with tritonclient."""

from __future__ import annotations

import queue
from typing import Any

import make_models
import numpy as np
import pytest
from conftest import ServerProcess
from helpers import client, infer_input, raw_request, stub, tiny_expected
from tritonclient.grpc import service_pb2 as pb


def test_tiny_infer_matches_numpy_and_names_the_active_version(server: ServerProcess) -> None:
    """The answer is x @ W + b of the highest version, which the response names."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = client(server.address).infer("tiny", [infer_input("INPUT0", x, "FP32")])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), tiny_expected(x, 2), rtol=1e-5)
    assert result.get_response().model_version == "2"


def test_request_id_is_echoed(server: ServerProcess) -> None:
    """The response carries the request's id."""
    x = np.zeros((1, 4), np.float32)
    result = client(server.address).infer(
        "tiny", [infer_input("INPUT0", x, "FP32")], request_id="req-42"
    )
    assert result.get_response().id == "req-42"


def test_explicit_version_runs_that_version(server: ServerProcess) -> None:
    """Naming the loaded version by number runs it and says so."""
    x = np.ones((1, 4), np.float32)
    result = client(server.address).infer(
        "tiny", [infer_input("INPUT0", x, "FP32")], model_version="2"
    )
    assert result.get_response().model_version == "2"
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), tiny_expected(x, 2), rtol=1e-5)


@pytest.mark.parametrize(("name", "onnx_type"), make_models.DTYPES)
def test_every_numeric_datatype_round_trips(server: ServerProcess, name: str, onnx_type: int
                                            ) -> None:
    """Each V2 numeric datatype (and BOOL, FP16) goes through an Identity unchanged."""
    from sidecar.datatypes import NUMPY_DTYPES  # numpy-only module; no protobuf

    dtype = NUMPY_DTYPES[name]
    rng = np.random.default_rng(7)
    if dtype == np.bool_:
        x = rng.integers(0, 2, size=5).astype(bool)
    elif dtype.kind == "f":
        x = rng.standard_normal(5).astype(dtype)
    else:
        info = np.iinfo(dtype)
        x = np.array([info.min, 0, 1, info.max, info.max // 3], dtype=dtype)
    result = client(server.address).infer(
        "dtypes", [infer_input(f"IN_{n}", x if n == name else _zeros(n), n)
                   for n, _ in make_models.DTYPES],
        outputs=None,
    )
    out = result.as_numpy(f"OUT_{name}")
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, x)


def _zeros(name: str) -> np.ndarray:
    from sidecar.datatypes import NUMPY_DTYPES

    return np.zeros(5, dtype=NUMPY_DTYPES[name])


def test_requested_output_subset_in_requested_order(server: ServerProcess) -> None:
    """Only the requested outputs come back, in the order asked."""
    import tritonclient.grpc as tc

    inputs = [infer_input(f"IN_{n}", _zeros(n), n) for n, _ in make_models.DTYPES]
    wanted = ["OUT_INT64", "OUT_BOOL"]
    result = client(server.address).infer(
        "dtypes", inputs, outputs=[tc.InferRequestedOutput(n) for n in wanted]
    )
    assert [o.name for o in result.get_response().outputs] == wanted
    assert len(result.get_response().raw_output_contents) == 2


def test_bytes_tensor_round_trips_through_a_string_model(server: ServerProcess) -> None:
    """BYTES inputs reach the ONNX string model as text; outputs come back as BYTES."""
    text = np.array([b"hello", b"World", b""], dtype=object)
    result = client(server.address).infer("text", [infer_input("TEXT", text, "BYTES")])
    assert result.get_response().outputs[0].datatype == "BYTES"
    assert result.as_numpy("UPPER").tolist() == [b"HELLO", b"WORLD", b""]


def _typed(stub_: Any, tensor: pb.ModelInferRequest.InferInputTensor, model: str
           ) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.append(tensor)
    return stub_.ModelInfer(request, timeout=10)


def test_typed_contents_are_accepted_and_answered_raw(server: ServerProcess) -> None:
    """A request with typed fp32_contents works; the answer is raw."""
    tensor = pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    with server.channel() as channel:
        response = _typed(stub(channel), tensor, "tiny")
    out = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(1, 3)
    x = np.array([[1, 2, 3, 4]], np.float32)
    np.testing.assert_allclose(out, tiny_expected(x, 2), rtol=1e-5)


def test_typed_bytes_contents_feed_a_string_model(server: ServerProcess) -> None:
    """Typed bytes_contents reach the string model; the answer is raw BYTES."""
    tensor = pb.ModelInferRequest.InferInputTensor(name="TEXT", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([b"ab", b"cd"])
    with server.channel() as channel:
        response = _typed(stub(channel), tensor, "text")
    assert response.raw_output_contents[0] == b"\x02\x00\x00\x00AB\x02\x00\x00\x00CD"


def test_typed_int_contents_feed_an_int8_input(server: ServerProcess) -> None:
    """INT8 travels in int_contents (int32 on the wire) and arrives as int8."""
    tensor = pb.ModelInferRequest.InferInputTensor(name="IN", datatype="INT8", shape=[3])
    tensor.contents.int_contents.extend([-128, 5, 127])
    with server.channel() as channel:
        response = _typed(stub(channel), tensor, "int8")
    assert response.outputs[0].datatype == "INT8"
    assert np.frombuffer(response.raw_output_contents[0], np.int8).tolist() == [-128, 5, 127]


def test_stream_infer_answers_each_request_and_survives_errors(server: ServerProcess) -> None:
    """On a stream, every request gets one response; an error is a message, not the end."""
    import tritonclient.grpc as tc

    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    c = client(server.address)
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        x = np.ones((1, 4), np.float32)
        c.async_stream_infer("tiny", [infer_input("INPUT0", x, "FP32")], request_id="a")
        c.async_stream_infer("tiny", [infer_input("NOPE", x, "FP32")], request_id="b")
        c.async_stream_infer("tiny", [infer_input("INPUT0", 2 * x, "FP32")], request_id="c")
        got = [results.get(timeout=30) for _ in range(3)]
    finally:
        c.stop_stream()
    (r1, e1), (_, e2), (r3, e3) = got
    assert e1 is None and r1.get_response().id == "a"
    assert isinstance(e2, tc.InferenceServerException) and "NOPE" in e2.message()
    assert e3 is None
    np.testing.assert_allclose(r3.as_numpy("OUTPUT0"), tiny_expected(2 * x, 2), rtol=1e-5)


def test_raw_request_by_hand_with_plain_stubs(server: ServerProcess) -> None:
    """Plain generated stubs (no tritonclient API) get a correct raw answer."""
    x = np.full((3, 4), 0.5, np.float32)
    with server.channel() as channel:
        response = stub(channel).ModelInfer(raw_request("tiny", [("INPUT0", "FP32", x)]),
                                            timeout=10)
    assert response.model_name == "tiny" and response.model_version == "2"
    assert list(response.outputs[0].shape) == [3, 3]
    out = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(3, 3)
    np.testing.assert_allclose(out, tiny_expected(x, 2), rtol=1e-5)
