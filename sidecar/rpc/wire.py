"""ModelInfer's fast path: raw numeric inputs in, wire bytes out.

What tritonclient and most V2 clients send is raw numeric tensors; this module
decodes those through a cache of checked layouts and writes the answer as
`ModelInferResponse` wire bytes, with no per-call field-by-field work:

- a request input's metadata (name, datatype, shape, parameters) is read as
  its own wire bytes, one `SerializeToString`; the layout they stand for,
  checked once, is looked up by them, and the input's array is a view of the
  message's bytes;
- an answer is the cached head of its plan and output shapes (model name,
  version, output metadata, each raw entry's tag and length), the id, and the
  outputs' bytes, in the field order protobuf parsers accept any order of.

Anything else (typed or BYTES contents, a size that does not fit, a BYTES
answer) is left to the general path in converters.py, which says what is
wrong. No generated module is imported here: the message classes are the
caller's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

import numpy as np

from sidecar.datatypes import WIRE_DTYPES
from sidecar.handlers.types import InferRequest, InferResult, TensorLayout
from sidecar.rpc.codec import MAX_ELEMENTS, MAX_RANK

#: Datatypes whose raw contents are a numpy view of the bytes.
_RAW_NUMERIC: Final = {k: v for k, v in WIRE_DTYPES.items() if k != "BYTES"}

#: A raw numeric input's layout, its numpy dtype and its size in bytes, by the
#: input's metadata as wire bytes (never contents, which would be in the bytes
#: too). Bounded: cleared when full.
_INPUTS: dict[bytes, tuple[TensorLayout, np.dtype[Any], int]] = {}
_MAX_INPUTS = 4096
_MAX_INPUT_KEY = 1024  # bytes: metadata longer than this is checked every time

#: Answers' fixed parts by plan and output shapes: the head (model, version and
#: output metadata), and per output the header of its raw_output_contents entry
#: and its wire dtype. Bounded: cleared when full.
_HEADS: dict[tuple[Any, ...], tuple[bytes, tuple[tuple[bytes, np.dtype[Any]], ...]]] = {}
_MAX_HEADS = 1024


def raw_request(msg: Any, received_ns: int = 0,
                time_left: Callable[[], float | None] | None = None) -> InferRequest | None:
    """A `ModelInferRequest` whose inputs are all well-formed raw numeric tensors,
    decoded (arrays are views of the message's bytes, no copy), or None."""
    raw = msg.raw_input_contents
    tensors = msg.inputs
    if not raw or len(raw) != len(tensors):
        return None
    feeds: dict[str, np.ndarray] = {}
    layouts: list[TensorLayout] = []
    for index, tensor in enumerate(tensors):
        metadata = tensor.SerializeToString()
        known = _INPUTS.get(metadata)
        if known is None:
            known = _raw_input(tensor, metadata)
            if known is None:
                return None
        layout, dtype, size = known
        buf = raw[index]
        if len(buf) != size:
            return None
        feeds[layout.name] = np.ndarray(layout.shape, dtype, buf)
        layouts.append(layout)
    outputs = [o.name for o in msg.outputs] if msg.outputs else []
    shapes = tuple(layouts)
    # positional: the fields' order in InferRequest
    return InferRequest(msg.model_name, msg.model_version, msg.id, [], outputs,
                        (shapes, tuple(outputs)), feeds, shapes, received_ns, time_left)


def _raw_input(tensor: Any, metadata: bytes) -> tuple[TensorLayout, np.dtype[Any], int] | None:
    """A well-formed raw numeric input's layout, dtype and size (remembered), or None."""
    datatype = tensor.datatype
    dtype = _RAW_NUMERIC.get(datatype)
    shape = tuple(tensor.shape)
    if dtype is None or tensor.HasField("contents") or len(shape) > MAX_RANK \
            or (shape and min(shape) <= 0):
        return None
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        return None
    known = (TensorLayout(tensor.name, datatype, shape), dtype, count * dtype.itemsize)
    if len(metadata) <= _MAX_INPUT_KEY:
        if len(_INPUTS) >= _MAX_INPUTS:
            _INPUTS.clear()
        _INPUTS[metadata] = known
    return known


def answer(result: InferResult) -> bytes | None:
    """The answer as `ModelInferResponse` wire bytes, or None when it has no plan
    to cache its head by or a BYTES output (whose lengths vary)."""
    arrays = result.arrays
    plan = result.plan
    if plan is None:
        return None
    if len(arrays) == 1:
        key: tuple[Any, ...] = (plan, arrays[0].shape)
    else:
        key = (plan, *[a.shape for a in arrays])
    head = _HEADS.get(key)
    if head is None:
        if "BYTES" in result.datatypes:
            return None
        head = _head(result, key)
    first, outputs = head
    parts: list[Any] = [first]  # bytes, and arrays (buffers: joined without a copy of their own)
    if result.id:
        parts.append(_text(3, result.id))
    for (header, dtype), array in zip(outputs, arrays, strict=True):
        parts.append(header)
        parts.append(array if array.dtype == dtype else np.ascontiguousarray(array, dtype=dtype))
    try:
        return b"".join(parts)  # arrays join as their buffers: the one copy of the outputs
    except TypeError:  # an output that is not row-major contiguous (rare): copied to be
        return b"".join(p if isinstance(p, bytes) else p.tobytes() for p in parts)


def _head(result: InferResult, key: tuple[Any, ...]
          ) -> tuple[bytes, tuple[tuple[bytes, np.dtype[Any]], ...]]:
    """Fields 1 (model_name), 2 (model_version) and 5 (outputs: name, datatype,
    shape); per output the tag of field 6 (raw_output_contents) and its length."""
    parts = [_text(1, result.model), _text(2, result.version)]
    outputs: list[tuple[bytes, np.dtype[Any]]] = []
    for name, datatype, array in zip(result.names, result.datatypes, result.arrays,
                                     strict=True):
        shape = b"".join(_varint(d) for d in array.shape)
        tensor = _text(1, name) + _text(2, datatype) + (_field(3, shape) if shape else b"")
        parts.append(_field(5, tensor))
        dtype = WIRE_DTYPES[datatype]
        outputs.append((_tag(6) + _varint(array.size * dtype.itemsize), dtype))
    head = (b"".join(parts), tuple(outputs))
    if len(_HEADS) >= _MAX_HEADS:
        _HEADS.clear()
    _HEADS[key] = head
    return head


def _tag(number: int) -> bytes:
    return _varint(number << 3 | 2)  # length-delimited


def _field(number: int, data: bytes) -> bytes:
    return _tag(number) + _varint(len(data)) + data


def _text(number: int, text: str) -> bytes:
    """A string field; nothing for "" (proto3 leaves defaults out)."""
    return _field(number, text.encode()) if text else b""


def _varint(n: int) -> bytes:
    """`n` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
