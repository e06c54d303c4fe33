"""The data plane's own Python per ModelInfer, in a tight loop (a development aid).

    python bench/handler.py [--scenario tiny|dense] [--calls N] [--repeat R] [--no-guard]
                            [--quick]

Builds what `sidecar serve` builds for the inference port (manager, guard,
shadow mirror, quality engine, data plane, the servicer) on the model of a
bench/run.py scenario (tiny: FP32 [1, 4]; dense: FP32 [8, 512]), in
this process, with no transport: each call parses a serialized
`ModelInferRequest` with the lenient deserializer grpc is given, awaits the
servicer's `ModelInfer` on a running event loop and serializes the answer. Beside
it, the same steps with the minimal server's handler (bench/minimal_server.py,
written again here on the sidecar's generated modules, which cannot share a
process with tritonclient's) on the same session, and `session.run` alone.

Prints microseconds per call (the best of R repeats of N calls) and the
sidecar's extra over the minimal handler. Under load each figure is several
times larger (colder caches, 16 calls interleaved on one thread), but what is
cut here is cut there: this is where per-call work is found and weighed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from harness import models, server

from sidecar.guard.guard import Guard
from sidecar.guard.rules import GuardSettings
from sidecar.guard.shadow import ShadowMirror
from sidecar.handlers.dataplane import DataPlane
from sidecar.loader.onnx import SessionConfig
from sidecar.manager.manager import ModelManager
from sidecar.quality.engine import QualityEngine
from sidecar.rpc.dataplane import InferenceServicer
from sidecar.rpc.decoding import _lenient
from sidecar.rpc.proto import inference_pb2 as pb
from sidecar.state.events import EventLog

DTYPES = {"FP32": np.dtype(np.float32)}
DATATYPES = {np.dtype(np.float32): "FP32"}


class Context:
    """What the servicer asks of grpc's context on the happy path."""

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: Any, message: str) -> None:
        raise RuntimeError(f"{code}: {message}")


#: scenario -> (model, input rows, input width), as in bench/run.py
SCENARIOS = {"tiny": (lambda: models.tiny_model(1), 1, models.TINY_IN),
             "dense": (models.dense_model, 8, 512)}


def request_bytes(model: str, x: np.ndarray) -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


def minimal_handler(session: Any) -> Any:
    """bench/minimal_server.py's ModelInfer, on this process's generated modules."""
    names = [o.name for o in session.get_outputs()]

    async def infer(request: Any, context: Any) -> Any:
        raw = request.raw_input_contents
        feeds = {t.name: np.frombuffer(raw[i], dtype=DTYPES[t.datatype]).reshape(tuple(t.shape))
                 for i, t in enumerate(request.inputs)}
        arrays = session.run(names, feeds)
        response = pb.ModelInferResponse(model_name=request.model_name,
                                         model_version=request.model_version or "1")
        for name, array in zip(names, arrays, strict=True):
            response.outputs.add(name=name, datatype=DATATYPES[array.dtype], shape=array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response
    return infer


def per_call(loop: asyncio.AbstractEventLoop, handler: Any, decode: Any, data: bytes,
             calls: int, repeat: int) -> float:
    """Best microseconds per call: decode, await the handler, encode (what grpc
    does around a servicer method), on a running event loop."""
    context = Context()

    async def many() -> None:
        for _ in range(calls):
            answer = await handler(decode(data), context)
            if not isinstance(answer, bytes):  # the sidecar answers wire bytes
                answer.SerializeToString()

    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter_ns()
        loop.run_until_complete(many())
        best = min(best, (time.perf_counter_ns() - began) / calls / 1000)
    return best


async def build(repo: Path, model: str, guard_on: bool) -> tuple[InferenceServicer, Any]:
    pool = ThreadPoolExecutor(2)
    manager = ModelManager(repo, SessionConfig(), events=EventLog(None))
    guard = Guard(manager, defaults=GuardSettings(enabled=guard_on),
                  settings_source=lambda model: {})
    mirror = ShadowMirror(manager, guard, inline_max_us=1000)
    quality = QualityEngine(manager, guard, mirror, source=lambda model: None)
    plane = DataPlane(manager, pool, nonfinite=guard.nonfinite_check, mirror=mirror,
                      quality=quality)
    await manager.start()
    guard.start()
    servicer = InferenceServicer(plane, {}, repository_control=False, outcomes={})
    handle = manager.acquire(model)
    handle.release()
    return servicer, handle.runner._session


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=tuple(SCENARIOS), default="tiny")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-guard", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2 x 1,000 calls (a smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.repeat = 1000, 2
    with tempfile.TemporaryDirectory(prefix="sidecar-handler-") as tmp:
        make, rows, width = SCENARIOS[args.scenario]
        repo = Path(tmp) / "repo"
        server.write_version(repo, args.scenario, 1, make())
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # the handlers may ask for the running loop's time
        servicer, session = loop.run_until_complete(build(repo, args.scenario,
                                                          not args.no_guard))
        decode = _lenient("/inference.GRPCInferenceService/ModelInfer",
                          pb.ModelInferRequest.FromString)
        x = np.random.default_rng(7).standard_normal((rows, width), dtype=np.float32)
        data = request_bytes(args.scenario, x)
        feeds = {"INPUT0": x}
        names = [o.name for o in session.get_outputs()]
        per_call(loop, servicer.ModelInfer, decode, data, 2000, 1)  # warm caches and plans
        rows = []
        for name, handler, dec in (
                ("sidecar", servicer.ModelInfer, decode),
                ("minimal", minimal_handler(session), pb.ModelInferRequest.FromString)):
            rows.append((name, per_call(loop, handler, dec, data, args.calls, args.repeat)))
        began = time.perf_counter_ns()
        for _ in range(args.calls):
            session.run(names, feeds)
        rows.append(("session.run", (time.perf_counter_ns() - began) / args.calls / 1000))
        loop.close()
    for name, us in rows:
        print(f"{name:<12} {us:6.2f} us/call")
    print(f"sidecar - minimal: {rows[0][1] - rows[1][1]:+.2f} us/call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
