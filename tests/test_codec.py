"""Tensor bytes on the wire <-> numpy, checked against the declared shape."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from sidecar.errors import InvalidInputError
from sidecar.rpc.codec import decode_raw, encode_raw


def _prefixed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def test_numeric_raw_round_trip_is_little_endian() -> None:
    """FP32 raw contents are little-endian; decode then encode gives the same bytes."""
    buf = struct.pack("<4f", 1.0, -2.5, 3.25, 0.0)
    array = decode_raw("x", "FP32", (2, 2), buf)
    assert array.tolist() == [[1.0, -2.5], [3.25, 0.0]]
    assert encode_raw("FP32", array) == buf


def test_encode_converts_non_contiguous_and_other_dtypes() -> None:
    """A transposed (non-contiguous) array is encoded row-major in the named datatype."""
    array = np.arange(6, dtype=np.int32).reshape(2, 3).T
    assert np.frombuffer(encode_raw("INT64", array), "<i8").tolist() == [0, 3, 1, 4, 2, 5]


def test_bytes_round_trip_with_empty_elements() -> None:
    """BYTES: 4-byte little-endian length then bytes, empty elements included."""
    buf = _prefixed(b"ab", b"", b"xyz")
    array = decode_raw("t", "BYTES", (3,), buf)
    assert array.tolist() == [b"ab", b"", b"xyz"]
    assert encode_raw("BYTES", np.array(["ab", "", "xyz"], dtype=object)) == buf


def test_zero_element_tensor() -> None:
    """A shape with a zero dimension needs zero bytes."""
    assert decode_raw("x", "FP32", (0, 4), b"").shape == (0, 4)


@pytest.mark.parametrize(
    ("datatype", "shape", "buf", "needle"),
    [
        ("FP32", (1, 4), b"\0" * 12, "hold 12 bytes"),
        ("INT64", (2,), b"\0" * 24, "needs 16"),
        ("BYTES", (2,), _prefixed(b"a"), "inside the length prefix"),
        ("BYTES", (1,), _prefixed(b"a") + b"!", "left over"),
    ],
)
def test_size_mismatches_are_invalid_input(
    datatype: str, shape: tuple[int, ...], buf: bytes, needle: str
) -> None:
    """Every size that does not match the shape is refused with both sizes named."""
    with pytest.raises(InvalidInputError, match=needle) as err:
        decode_raw("input 'X'", datatype, shape, buf)
    assert "input 'X'" in str(err.value)
