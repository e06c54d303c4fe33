"""Tensor bytes on the wire <-> numpy arrays (no protobuf here).

Raw contents are little-endian and row-major; a BYTES tensor is its elements
each as a 4-byte little-endian length and the bytes, concatenated. Every size
is checked against the declared shape: a short, long or malformed buffer is an
`InvalidInputError` naming the tensor, what was expected and what came.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from sidecar.datatypes import WIRE_DTYPES
from sidecar.errors import InvalidInputError

_LEN = struct.Struct("<I")


#: Limits of a tensor's shape: numpy's rank limit is 64, no model has more than a
#: handful, and no message can hold more elements than this.
MAX_RANK = 32
MAX_ELEMENTS = 2**31
#: BYTES elements are Python objects, decoded and encoded one by one: a tensor of
#: tens of millions of empty strings (a 256 MiB message) would hold the server for
#: minutes. Real text batches are far below this.
MAX_BYTES_ELEMENTS = 1 << 20


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def check_shape(where: str, shape: tuple[int, ...]) -> None:
    """Refuse shapes no tensor can have, before anything is allocated for them."""
    shown = list(shape[:8]) + (["..."] if len(shape) > 8 else [])
    if len(shape) > MAX_RANK:
        raise InvalidInputError(f"{where}: shape has {len(shape)} dimensions; at most"
                                f" {MAX_RANK} are accepted")
    if any(d < 0 for d in shape):
        raise InvalidInputError(f"{where}: shape {shown} has a negative dimension")
    if any(d > MAX_ELEMENTS for d in shape) or element_count(shape) > MAX_ELEMENTS:
        raise InvalidInputError(f"{where}: shape {shown} holds more than {MAX_ELEMENTS}"
                                " elements")


def decode_raw(where: str, datatype: str, shape: tuple[int, ...], buf: bytes) -> np.ndarray:
    """Decode one tensor's raw contents; `where` names it in error messages."""
    count = element_count(shape)
    if datatype == "BYTES":
        return decode_bytes(where, shape, count, buf)
    dtype = WIRE_DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(buf) != expected:
        raise InvalidInputError(
            f"{where}: raw contents hold {len(buf)} bytes, but {datatype} of shape"
            f" {list(shape)} needs {expected}"
        )
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def decode_bytes(where: str, shape: tuple[int, ...], count: int, buf: bytes) -> np.ndarray:
    items: list[bytes] = []
    view = memoryview(buf)
    offset, end = 0, len(buf)
    for index in range(count):
        if offset + 4 > end:
            raise InvalidInputError(
                f"{where}: BYTES contents end inside the length prefix of element {index}"
                f" of {count} (byte {offset} of {end})"
            )
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInputError(
                f"{where}: BYTES element {index} declares {length} bytes but only"
                f" {end - offset} remain"
            )
        items.append(bytes(view[offset:offset + length]))
        offset += length
    if offset != end:
        raise InvalidInputError(
            f"{where}: BYTES contents have {end - offset} bytes left over after the"
            f" {count} elements of shape {list(shape)}"
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


def encode_raw(datatype: str, array: np.ndarray) -> bytes:
    """One tensor's raw contents for a response."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for item in array.ravel():
            data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            parts.append(_LEN.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    dtype = WIRE_DTYPES[datatype]
    if array.dtype != dtype or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=dtype)
    return array.tobytes()
