"""Small client-side helpers shared by the tests (tritonclient only)."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException


def client(address: str, **kwargs: Any) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(address, **kwargs)


def infer_input(name: str, array: np.ndarray, datatype: str) -> tc.InferInput:
    tensor = tc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def tiny_expected(x: np.ndarray, version: int) -> np.ndarray:
    import make_models

    w, b = make_models.tiny_weights(version)
    return x @ w + b


def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def raw_request(model: str, tensors: list[tuple[str, str, np.ndarray]], **kw: Any
                ) -> pb.ModelInferRequest:
    """A ModelInferRequest with raw contents, built by hand (bypasses tritonclient)."""
    request = pb.ModelInferRequest(model_name=model, **kw)
    for name, datatype, array in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request


def status_of(call: Any) -> tuple[str, str]:
    """Run a callable expected to fail; return its gRPC status name and message."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()
    except InferenceServerException as exc:
        return str(exc.status()).removeprefix("StatusCode."), exc.message()
    raise AssertionError("the call succeeded but should have failed")
