"""The Open Inference Protocol's tensor datatypes and their numpy forms.

Shared vocabulary of every layer: the loader names its signature's types with
these strings, handlers validate against them, converters encode with them.
No onnxruntime and no protobuf here.
"""

from __future__ import annotations

from typing import Final

import numpy as np

#: V2 datatype -> numpy dtype. BYTES is an object array of `bytes`/`str`.
#: BF16 has no numpy dtype and is not served (the loader refuses such models).
NUMPY_DTYPES: Final[dict[str, np.dtype[np.generic]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

#: Little-endian forms used on the wire (raw contents are little-endian).
WIRE_DTYPES: Final[dict[str, np.dtype[np.generic]]] = {
    name: dt.newbyteorder("<") if dt.itemsize > 1 and name != "BYTES" else dt
    for name, dt in NUMPY_DTYPES.items()
}

#: Every datatype name a request may carry, served or not.
KNOWN_DATATYPES: Final[frozenset[str]] = frozenset({*NUMPY_DTYPES, "BF16"})

#: V2 datatype -> Triton model_config DataType enum name.
CONFIG_TYPES: Final[dict[str, str]] = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
    "BF16": "TYPE_BF16",
}

