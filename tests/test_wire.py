"""The request path's shortcuts give what the long way gives.

ModelInfer answers wire bytes written from a cached head and decodes raw
numeric inputs through a cache of checked layouts (rpc/wire.py); on the CPU
provider the compiled session's run is called directly (loader/onnx.py). Each
is checked here against an independent reference: messages of tritonclient's
generated modules (the same schema, another build of it), parsed and built
field by field, and the public `InferenceSession.run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import make_models
import numpy as np
import onnxruntime as ort
import pytest
from tritonclient.grpc import service_pb2 as pb

from sidecar.handlers.types import InferResult
from sidecar.loader.onnx import Runner, SessionConfig, load
from sidecar.rpc import wire
from sidecar.rpc.codec import encode_raw


def _result(arrays: list[np.ndarray], datatypes: tuple[str, ...], *, id_: str = "",
            plan: Any = None) -> InferResult:
    names = [f"OUT{i}" for i in range(len(arrays))]
    return InferResult("m", "7", id_, names, datatypes, arrays, plan)


RESULTS = {
    "one FP32 output": ([np.arange(3, dtype=np.float32).reshape(1, 3)], ("FP32",)),
    "several datatypes": ([np.arange(4, dtype=np.int64), np.array([True, False]),
                           np.arange(6, dtype=np.float16).reshape(2, 3),
                           np.arange(200, dtype=np.uint8)],
                          ("INT64", "BOOL", "FP16", "UINT8")),
    "an empty output": ([np.zeros((0, 3), np.float32)], ("FP32",)),
    "a scalar": ([np.array(2.5, np.float64)], ("FP64",)),
    "non-contiguous": ([np.arange(12, dtype=np.float32).reshape(3, 4).T], ("FP32",)),
    "another dtype than the datatype's": ([np.arange(5, dtype=np.float64)], ("FP32",)),
    "long lengths (multi-byte varints)": ([np.ones((64, 600), np.float32)], ("FP32",)),
    "a BYTES output (by message)": ([np.array([b"ab", b""], dtype=object)], ("BYTES",)),
}


def _message(result: InferResult) -> pb.ModelInferResponse:
    """The answer built field by field, as a reference."""
    message = pb.ModelInferResponse(model_name=result.model, model_version=result.version,
                                    id=result.id)
    for name, datatype, array in zip(result.names, result.datatypes, result.arrays,
                                     strict=True):
        message.outputs.add(name=name, datatype=datatype, shape=array.shape)
        message.raw_output_contents.append(encode_raw(datatype, array))
    return message


@pytest.mark.parametrize("case", list(RESULTS))
@pytest.mark.parametrize("id_", ["", "req-1", "ünïcode ✓", "x" * 300])
def test_wire_answer_parses_to_the_message_answer(case: str, id_: str) -> None:
    """The bytes parse to exactly the message built field by field, the first
    time (the head is made) and the next (the head is reused), for any id; a
    BYTES answer is left to the message path."""
    arrays, datatypes = RESULTS[case]
    plan = object()
    for _ in range(2):
        result = _result(arrays, datatypes, id_=id_, plan=plan)
        data = wire.answer(result)
        if "BYTES" in datatypes:
            assert data is None
            continue
        assert data is not None
        assert pb.ModelInferResponse.FromString(data) == _message(result)


def test_wire_answers_of_one_plan_differ_by_output_shape() -> None:
    """A plan whose outputs change shape (data-dependent shapes) gets a head per shape."""
    plan = object()
    for rows in (1, 3, 1, 2):
        result = _result([np.ones((rows, 2), np.float32)], ("FP32",), plan=plan)
        data = wire.answer(result)
        assert data is not None
        parsed = pb.ModelInferResponse.FromString(data)
        assert list(parsed.outputs[0].shape) == [rows, 2]
        assert len(parsed.raw_output_contents[0]) == rows * 2 * 4


def test_wire_answer_without_a_plan_is_left_to_the_message_path() -> None:
    """A result that names no plan (nothing to cache its head by): no bytes."""
    assert wire.answer(_result([np.ones((1, 2), np.float32)], ("FP32",), id_="a")) is None


def _request(tensors: list[tuple[str, str, np.ndarray]], *, outputs: tuple[str, ...] = ()
             ) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", model_version="2", id="i")
    for name, datatype, array in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    return request


@pytest.mark.parametrize("datatype,array", [
    ("FP32", np.arange(8, dtype=np.float32).reshape(2, 4)),
    ("INT64", np.arange(3, dtype=np.int64)),
    ("UINT8", np.arange(5, dtype=np.uint8).reshape(5, 1, 1)),
    ("BOOL", np.array([True, False, True])),
    ("FP16", np.arange(4, dtype=np.float16)),
    ("FP64", np.array(1.5)),  # rank 0
])
def test_raw_inputs_decode_through_the_layout_cache(datatype: str, array: np.ndarray) -> None:
    """Raw numeric inputs come decoded (values, shape, dtype as sent), twice over
    (the second time from the cache, with the very same layout objects: a plan
    cached for them is found again)."""
    def request() -> pb.ModelInferRequest:
        return _request([("A", datatype, array), ("B", "INT32", np.arange(2, dtype=np.int32))],
                        outputs=("Y",))

    first, again = wire.raw_request(request()), wire.raw_request(request(), 5)
    assert first is not None and again is not None
    for decoded in (first, again):
        assert decoded.feeds is not None and decoded.inputs == []
        np.testing.assert_array_equal(decoded.feeds["A"], array)
        assert decoded.feeds["A"].dtype == array.dtype and decoded.feeds["A"].shape == array.shape
        assert [(t.name, t.datatype, t.shape) for t in decoded.tensors] == [
            ("A", datatype, array.shape), ("B", "INT32", (2,))]
        assert (decoded.model, decoded.version, decoded.id, decoded.outputs) == (
            "m", "2", "i", ["Y"])
    assert again.received_ns == 5
    assert first.key == again.key and hash(first.key) == hash(again.key)
    assert all(a is b for a, b in zip(first.tensors, again.tensors, strict=True))


def test_a_known_layout_with_the_wrong_byte_count_leaves_the_fast_path() -> None:
    """A layout seen before, sent with too few or too many bytes, is not decoded here: the
    general path (converters.py) says what came and what was needed."""
    x = np.ones((1, 4), np.float32)
    assert wire.raw_request(_request([("INPUT0", "FP32", x)])) is not None
    for data in (x.tobytes()[:12], x.tobytes() + bytes(4)):
        wrong = _request([("INPUT0", "FP32", x)])
        wrong.raw_input_contents[0] = data
        assert wire.raw_request(wrong) is None


def test_inputs_off_the_fast_path() -> None:
    """Typed contents, BYTES, shapes no tensor can have, raw and typed mixed, a
    raw entry count that differs from the inputs: none is decoded here."""
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="A", datatype="INT32", shape=[2]).contents.int_contents.extend([1, 2])
    text = _request([("A", "BYTES", np.array([b"ab"], dtype=object))])
    text.raw_input_contents[0] = b"\x02\x00\x00\x00ab"
    negative = _request([("A", "FP32", np.ones(2, np.float32))])
    del negative.inputs[0].shape[:]
    negative.inputs[0].shape.extend([-1, 2])
    empty = _request([("A", "FP32", np.ones((0, 2), np.float32))])
    mixed = _request([("A", "INT32", np.ones(2, np.int32))])
    mixed.inputs[0].contents.int_contents.extend([1, 2])
    extra = _request([("A", "INT32", np.ones(2, np.int32))])
    extra.raw_input_contents.append(b"")
    for request in (typed, text, negative, empty, mixed, extra):
        assert wire.raw_request(request) is None


def test_the_layout_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ever new layouts (a client changing names or shapes) never grow the cache
    beyond its bound, and every request still decodes right."""
    monkeypatch.setattr(wire, "_MAX_INPUTS", 4)
    monkeypatch.setattr(wire, "_INPUTS", {})
    for n in range(1, 20):
        x = np.arange(n, dtype=np.float32)
        decoded = wire.raw_request(_request([(f"in{n}", "FP32", x)]))
        assert decoded is not None and decoded.feeds is not None
        np.testing.assert_array_equal(decoded.feeds[f"in{n}"], x)
        assert len(wire._INPUTS) <= 4


class _WrapperOnly:
    """A session with the public run only (as another onnxruntime might be)."""

    def __init__(self, session: Any) -> None:
        self.run = session.run
        self.get_providers = session.get_providers


def test_the_direct_run_answers_as_the_public_run(tmp_path: Path) -> None:
    """On the CPU provider the runner calls the compiled session directly and gets
    what InferenceSession.run gets; a session without it goes through its run."""
    path = make_models.write_model(make_models.tiny_model(1), tmp_path, "tiny", 1)
    loaded = load(path, SessionConfig())
    assert loaded.runner.direct
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    expected = session.run(None, {"INPUT0": x})[0]
    np.testing.assert_array_equal(loaded.runner.run({"INPUT0": x})[0], expected)
    plain = Runner(_WrapperOnly(session), loaded.signature)
    assert not plain.direct
    np.testing.assert_array_equal(plain.run({"INPUT0": x})[0], expected)
