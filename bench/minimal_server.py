"""The benchmark's baseline: the least a Python gRPC V2 inference server can do.

This module owns the baseline the sidecar is measured against (see the
"Performance targets" of the design): a grpc.aio server that implements only
`ModelInfer` (plus `ServerReady`, for readiness checks) of
`inference.GRPCInferenceService`. It loads one ONNX file with onnxruntime's
default session options, decodes `raw_input_contents` with `np.frombuffer`,
runs the session inline in the coroutine and answers raw. No validation, no
health service, no reflection, no statistics, no thread pool.

It uses tritonclient's generated modules and never imports the `sidecar`
package, so nothing the sidecar does can leak into the baseline.

    python bench/minimal_server.py --model PATH --listen HOST:PORT [--max-message-mb N]
                                   [--intra-op-threads N]

`--intra-op-threads` (not set by default) exists to compare the sidecar with a
baseline given the same onnxruntime thread count, besides the default one.

Prints one JSON line `{"event": "serving", "address": "HOST:PORT"}` (the actual
port when given port 0) to stdout once it accepts calls, the line the sidecar
logs when it is ready, so one reader (tests/serverlog.py) waits for both; stops
on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

MIB = 1024 * 1024

#: V2 datatype <-> numpy dtype, for the numeric types only (raw contents are
#: little-endian, which is what numpy uses on every machine this runs on).
DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(t) for name, t in (
    ("BOOL", np.bool_), ("UINT8", np.uint8), ("UINT16", np.uint16), ("UINT32", np.uint32),
    ("UINT64", np.uint64), ("INT8", np.int8), ("INT16", np.int16), ("INT32", np.int32),
    ("INT64", np.int64), ("FP16", np.float16), ("FP32", np.float32), ("FP64", np.float64))}
DATATYPES: dict[np.dtype[Any], str] = {dt: name for name, dt in DTYPES.items()}


class MinimalServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """ModelInfer on one session; every other method stays UNIMPLEMENTED."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._output_names = [o.name for o in session.get_outputs()]

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        raw = request.raw_input_contents
        feeds = {
            tensor.name: np.frombuffer(raw[i], dtype=DTYPES[tensor.datatype]).reshape(
                tuple(tensor.shape)
            )
            for i, tensor in enumerate(request.inputs)
        }
        arrays = self._session.run(self._output_names, feeds)
        response = pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version or "1"
        )
        for name, array in zip(self._output_names, arrays, strict=True):
            response.outputs.add(name=name, datatype=DATATYPES[array.dtype], shape=array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Minimal V2 gRPC server (benchmark baseline).")
    parser.add_argument("--model", required=True, help="path of the ONNX file to serve")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free)")
    parser.add_argument("--max-message-mb", type=int, default=256, help="largest message, MiB")
    parser.add_argument(
        "--intra-op-threads", type=int, default=0,
        help="onnxruntime intra-op threads (default 0: onnxruntime's default options)",
    )
    return parser.parse_args(argv)


def load(model: str, intra_op_threads: int) -> Any:
    """The session: onnxruntime's default options unless told a thread count."""
    options = ort.SessionOptions()
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


async def serve(session: Any, listen: str, max_message_mb: int) -> None:
    """Serve until SIGTERM/SIGINT; print the bound address once started."""
    size = min(max_message_mb * MIB, 2**31 - 1)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(MinimalServicer(session), server)
    port = server.add_insecure_port(listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        address = f"{listen.rsplit(':', 1)[0]}:{port}"
        print(json.dumps({"event": "serving", "address": address}), flush=True)
        await stop.wait()
    finally:
        await server.stop(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    session = load(args.model, args.intra_op_threads)
    asyncio.run(serve(session, args.listen, args.max_message_mb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
