"""Protobuf messages of `inference.GRPCInferenceService` <-> handler dataclasses.

The only module that reads or builds the data plane's messages. Requests come
raw (`raw_input_contents`, what tritonclient sends) or typed (`contents.*`);
mixing the two is refused. Responses are always raw, one entry per output in
the order of `outputs`, which is what tritonclient decodes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final

import numpy as np

from sidecar.datatypes import CONFIG_TYPES, KNOWN_DATATYPES, NUMPY_DTYPES
from sidecar.errors import InvalidInputError
from sidecar.handlers.types import (
    IndexEntry,
    InferInput,
    InferRequest,
    InferResult,
    ModelMetadata,
    VersionStatistics,
)
from sidecar.loader.signature import TensorSpec
from sidecar.rpc import wire
from sidecar.rpc.codec import (
    MAX_BYTES_ELEMENTS,
    check_shape,
    decode_raw,
    element_count,
    encode_raw,
)
from sidecar.rpc.proto import inference_pb2 as pb

#: V2 datatype -> the typed-contents field that carries it (FP16/BF16: raw only).
TYPED_FIELDS: Final[dict[str, str]] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_TYPED_NAMES: Final = tuple(sorted(set(TYPED_FIELDS.values())))


def infer_request(msg: pb.ModelInferRequest, received_ns: int = 0,
                  time_left: Callable[[], float | None] | None = None) -> InferRequest:
    """The request's tensors, checked for what they are on their own (datatype,
    shape, size). When every input is a raw numeric tensor (what tritonclient
    sends) they come decoded, as views of the message's bytes (no copy), by
    the fast path of wire.py. BYTES and typed contents are decoded by the
    handler, once the model, name, datatype and shape are known to fit. Error
    text is built on errors only."""
    fast = wire.raw_request(msg, received_ns, time_left)
    return fast if fast is not None else _general_request(msg, received_ns, time_left)


def _general_request(msg: pb.ModelInferRequest, received_ns: int,
                     time_left: Callable[[], float | None] | None) -> InferRequest:
    """Any request off the fast path: every input checked, each with its message;
    decoding left to the handler."""
    raw = msg.raw_input_contents
    tensors = msg.inputs
    if raw and len(raw) != len(tensors):
        raise InvalidInputError(
            f"request for model '{msg.model_name[:80]}' has {len(tensors)} input(s) but"
            f" {len(raw)} raw_input_contents entries"
        )
    inputs: list[InferInput] = []
    key: list[tuple[str, str, tuple[int, ...]]] = []
    for index, tensor in enumerate(tensors):
        datatype = tensor.datatype
        shape = tuple(tensor.shape)
        key.append((tensor.name, datatype, shape))
        inputs.append(_slow_input(msg, index, tensor, datatype, shape))
    outputs = [o.name for o in msg.outputs] if msg.outputs else []
    return InferRequest(msg.model_name, msg.model_version, msg.id, inputs, outputs,
                        (tuple(key), tuple(outputs)), received_ns=received_ns,
                        time_left=time_left)


def _slow_input(msg: pb.ModelInferRequest, index: int, tensor: Any, datatype: str,
                shape: tuple[int, ...]) -> InferInput:
    """Any tensor but a well-formed raw numeric one: every check, with its message."""
    where = f"input '{tensor.name[:80]}' of model '{msg.model_name[:80]}'"
    if datatype not in KNOWN_DATATYPES:
        raise InvalidInputError(f"{where}: unknown datatype '{datatype}'")
    if datatype not in NUMPY_DTYPES:
        raise InvalidInputError(f"{where}: datatype {datatype} is not supported")
    check_shape(where, shape)
    if datatype == "BYTES" and element_count(shape) > MAX_BYTES_ELEMENTS:
        raise InvalidInputError(f"{where}: a BYTES tensor of {element_count(shape)}"
                                f" elements; at most {MAX_BYTES_ELEMENTS} are accepted")
    typed = typed_values(tensor)
    raw = msg.raw_input_contents
    if raw:
        if typed is not None:
            raise InvalidInputError(
                f"{where}: has typed contents while the request uses raw_input_contents;"
                " use one form for all inputs"
            )
        buf = raw[index]
        return InferInput(tensor.name, datatype, shape, size=len(buf),
                          decode=functools.partial(decode_raw, where, datatype, shape, buf))
    if typed is not None and datatype not in TYPED_FIELDS:
        raise InvalidInputError(f"{where}: {datatype} has no typed contents field;"
                                " send it in raw_input_contents")
    return InferInput(tensor.name, datatype, shape,
                      size=len(typed[1]) if typed is not None else 0,
                      decode=functools.partial(decode_typed, where, datatype, shape, typed))


def typed_values(tensor: Any) -> tuple[str, Any] | None:
    """(field name, values) of the one non-empty typed field, or None."""
    if not tensor.HasField("contents"):
        return None
    contents = tensor.contents
    found = [(name, getattr(contents, name)) for name in _TYPED_NAMES if getattr(contents, name)]
    if len(found) > 1:
        raise InvalidInputError(
            f"input '{tensor.name}': typed contents fill several fields"
            f" ({', '.join(n for n, _ in found)}); use the one of its datatype"
        )
    return found[0] if found else None


def decode_typed(
    where: str, datatype: str, shape: tuple[int, ...], typed: tuple[str, Any] | None
) -> np.ndarray:
    count = element_count(shape)
    if typed is None:
        if count == 0:
            return np.empty(shape, dtype=NUMPY_DTYPES[datatype])
        raise InvalidInputError(f"{where}: no data (neither raw nor typed contents)")
    name, values = typed
    expected = TYPED_FIELDS.get(datatype)
    if expected is None:
        raise InvalidInputError(
            f"{where}: {datatype} has no typed contents field; send it in raw_input_contents"
        )
    if name != expected:
        raise InvalidInputError(f"{where}: {datatype} data belongs in contents.{expected}, "
                                f"not contents.{name}")
    if len(values) != count:
        raise InvalidInputError(
            f"{where}: contents.{name} holds {len(values)} elements, but shape"
            f" {list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind in "iu" and dtype.itemsize < 4:
        wide = np.asarray(values, dtype=np.int64)
        info = np.iinfo(dtype.type)  # type: ignore[type-var]
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise InvalidInputError(
                f"{where}: a value is out of the {datatype} range [{info.min}, {info.max}]"
            )
        return wide.astype(dtype).reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


#: Response skeletons (model, version, output names, datatypes, shapes) by the
#: plan and output shapes that made them: copying one is a third of the cost of
#: building it field by field. Bounded: cleared when full.
_SKELETONS: dict[tuple[Any, ...], pb.ModelInferResponse] = {}
_MAX_SKELETONS = 1024


def infer_response(result: InferResult) -> pb.ModelInferResponse:
    arrays = result.arrays
    shapes = tuple(a.shape for a in arrays)
    plan = result.plan
    skeleton = _SKELETONS.get((plan, shapes)) if plan is not None else None
    if skeleton is None:
        skeleton = pb.ModelInferResponse(model_name=result.model, model_version=result.version)
        for name, datatype, shape in zip(result.names, result.datatypes, shapes, strict=True):
            skeleton.outputs.add(name=name, datatype=datatype, shape=shape)
        if plan is not None:
            if len(_SKELETONS) >= _MAX_SKELETONS:
                _SKELETONS.clear()
            _SKELETONS[(plan, shapes)] = skeleton
    response = pb.ModelInferResponse()
    response.CopyFrom(skeleton)
    if result.id:
        response.id = result.id
    response.raw_output_contents.extend(
        [encode_raw(datatype, array) for datatype, array in zip(result.datatypes, arrays,
                                                                 strict=True)])
    return response


def infer_response_wire(result: InferResult) -> bytes:
    """The answer as ModelInferResponse wire bytes (wire.py's, or the message's
    when that has none). grpc sends them as they are: ModelInfer is registered
    without a response serializer."""
    data = wire.answer(result)
    return data if data is not None else infer_response(result).SerializeToString()


def _tensor_metadata(
    specs: tuple[TensorSpec, ...],
) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape)
        for t in specs
    ]


def metadata_response(meta: ModelMetadata) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(
        name=meta.name,
        versions=meta.versions,
        platform=meta.platform,
        inputs=_tensor_metadata(meta.inputs),
        outputs=_tensor_metadata(meta.outputs),
    )


def config_response(meta: ModelMetadata, parameters: dict[str, str]
                    ) -> pb.ModelConfigResponse:
    """Triton's convention: a version that batches reports `max_batch_size` and
    its dims without the batch dimension; one that does not reports 0 and its
    full shapes (any batch dimension as -1). Parameters: the session options
    (`parameters`), why dynamic batching is refused, and the version's own
    (`meta.parameters`: created, updated, onnx_*)."""
    batching = meta.batching
    cut = 1 if batching else 0
    params = dict(parameters)
    if meta.batching_note:
        params["dynamic_batching"] = meta.batching_note
    params.update(meta.parameters)  # created, updated, onnx_*: the version's own
    config = pb.ModelConfig(
        name=meta.name,
        platform=meta.platform,
        backend="onnxruntime",
        max_batch_size=batching[0] if batching else 0,
        input=[
            pb.ModelInput(name=t.name, data_type=CONFIG_TYPES[t.datatype], dims=t.shape[cut:])
            for t in meta.inputs
        ],
        output=[
            pb.ModelOutput(name=t.name, data_type=CONFIG_TYPES[t.datatype], dims=t.shape[cut:])
            for t in meta.outputs
        ],
        parameters={k: pb.ModelParameter(string_value=v) for k, v in params.items()},
    )
    if batching:
        config.dynamic_batching.max_queue_delay_microseconds = batching[1]
        config.dynamic_batching.preferred_batch_size.extend(batching[2])
    config.version_policy.specific.versions.extend(int(v) for v in meta.versions)
    return pb.ModelConfigResponse(config=config)


def index_response(rows: list[IndexEntry]) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=r.name, version=r.version, state=r.state, reason=r.reason
            )
            for r in rows
        ]
    )


def _duration(pair: tuple[int, int]) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=pair[0], ns=pair[1])


def statistics_response(rows: list[VersionStatistics]) -> pb.ModelStatisticsResponse:
    return pb.ModelStatisticsResponse(
        model_stats=[
            pb.ModelStatistics(
                name=r.name,
                version=r.version,
                last_inference=r.last_inference_ms,
                inference_count=r.inference_count,
                execution_count=r.execution_count,
                inference_stats=pb.InferStatistics(
                    success=_duration(r.success),
                    fail=_duration(r.fail),
                    queue=_duration(r.queue),
                    compute_input=_duration(r.compute_input),
                    compute_infer=_duration(r.compute_infer),
                    compute_output=_duration(r.compute_output),
                ),
                batch_stats=[
                    pb.InferBatchStatistics(batch_size=rows,
                                            compute_infer=_duration((runs, ns)))
                    for rows, runs, ns in r.batches
                ],
            )
            for r in rows
        ]
    )


def load_version(msg: pb.RepositoryModelLoadRequest) -> int | None:
    """The optional `version` parameter of RepositoryModelLoad (int or string)."""
    param = msg.parameters.get("version")
    if param is None:
        return None
    kind = param.WhichOneof("parameter_choice")
    value: Any = getattr(param, kind) if kind else None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0 or isinstance(value, bool):
        raise InvalidInputError(f"parameter 'version' must be a positive integer, got {value!r}")
    return number
