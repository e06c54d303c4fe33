"""The request-path cost of remembering answers for quality feedback, in process.

`DataPlane.infer` (with the response encoded by the rpc layer's converter, as
the server does) of batch-1 requests that carry an id, on a classifier
(FP32 [1, 4] -> FP32 [1, 4]) with version 1 warm as previous, in five
configurations, interleaved round by round:

- off: no quality engine (the data plane as before quality existed);
- no id: a quality engine and settings, requests without an id (the flag only);
- remember: quality settings with shadow_share 0 (summarize + remember);
- mirror: shadow_share 1 (remember, and a copy queued for the previous version,
  which runs it in the shadow thread; its answer joins the id on the loop);
- mirror+truth: as mirror, and the truth of every answer joined (feedback).

After the warm-up, `gc.freeze()` as in the server. Each request is followed by
one `asyncio.sleep(0)`, and in the mirror
configurations by a wait for the mirror's queue to empty (every copy runs:
none is dropped, as in a server that is not saturated; a saturated one drops
copies instead, by design). Figures: CPU time of the process (every thread:
the loop, the shadow thread running the copies) per request, median over
rounds, and its ratio to off; for the configurations without copies, CPU and
wall time are the same. The gRPC transport is not in these figures: a served
request costs several times more CPU (bench/run.py), so the relative cost in
a server is smaller by that factor.

    python bench/quality_remember.py [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import make_models  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sidecar.guard.guard import Guard  # noqa: E402
from sidecar.guard.rules import GuardSettings  # noqa: E402
from sidecar.guard.shadow import ShadowMirror  # noqa: E402
from sidecar.handlers.dataplane import DataPlane  # noqa: E402
from sidecar.handlers.types import InferInput, InferRequest  # noqa: E402
from sidecar.loader.onnx import SessionConfig  # noqa: E402
from sidecar.manager.manager import ModelManager  # noqa: E402
from sidecar.quality.engine import QualityEngine  # noqa: E402
from sidecar.rpc.converters import infer_response  # noqa: E402
from sidecar.state.events import EventLog  # noqa: E402

CONFIGS = ("off", "no id", "remember", "mirror", "mirror+truth")


def classifier(bias: list[float], name: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "B"], ["SCORES"])], name,
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("SCORES", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(np.asarray(bias, np.float32), "B")])
    return helper.make_model(graph, ir_version=make_models.IR_VERSION,
                             opset_imports=[helper.make_opsetid("", make_models.OPSET)])


async def run(repo: Path, config: str, requests: int, seed: int) -> float:
    """Seconds of loop time per request for one configuration."""
    share = 1.0 if config.startswith("mirror") else 0.0
    manager = ModelManager(repo, SessionConfig(), events=EventLog(None))
    guard = Guard(manager, defaults=GuardSettings(), settings_source=lambda model: {})
    mirror = ShadowMirror(manager, guard)
    engine = QualityEngine(manager, guard, mirror,
                           source=lambda model: {"output": "SCORES", "shadow_share": share})
    pool = ThreadPoolExecutor(1)
    plane = DataPlane(manager, pool, mirror=mirror,
                      quality=None if config == "off" else engine)
    await manager.start()
    guard.start()
    engine.start()
    mirror.start()
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((requests, 1, 4)).astype(np.float32)
    truth = [np.array([int(x.argmax())], np.int64) for x in xs]
    with_id = config != "no id"
    truths = config == "mirror+truth"
    key = ((("INPUT0", "FP32", (1, 4)),), ())
    for i in range(200):  # warm-up: plans cached, sessions warm
        request = InferRequest("m", id="", key=key, decoded=True,
                               inputs=[InferInput("INPUT0", "FP32", (1, 4), xs[i])])
        await plane.infer(request, infer_response)
    await mirror.idle()
    gc.collect()
    gc.freeze()  # as the server does once started: start-up's objects are not walked again
    mirrored = config.startswith("mirror")
    start = time.process_time()
    for i in range(requests):
        request_id = f"id-{i}" if with_id else ""
        request = InferRequest("m", id=request_id, key=key, decoded=True,
                               inputs=[InferInput("INPUT0", "FP32", (1, 4), xs[i])])
        await plane.infer(request, infer_response)
        await asyncio.sleep(0)
        if mirrored:
            await mirror.idle()
        if truths and i:
            engine.feedback("m", f"id-{i - 1}", [InferInput("SCORES", "INT64", (1,),
                                                            truth[i - 1])])
    await mirror.idle()
    elapsed = time.process_time() - start
    if mirrored:
        counts = engine.counts("m")
        assert counts["copies_dropped"] == 0, counts
    await mirror.close()
    await guard.close()
    await manager.close()
    pool.shutdown()
    gc.unfreeze()
    gc.collect()
    return elapsed / requests


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="quality-bench-") as tmp:
        repo = Path(tmp)
        make_models.write_model(classifier([0, 0, 0, 0], "m_v1"), repo, "m", 1)
        make_models.write_model(classifier([0, 0, 0, -1], "m_v2"), repo, "m", 2)
        times: dict[str, list[float]] = {c: [] for c in CONFIGS}
        for r in range(args.rounds):
            order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
            for config in order:
                times[config].append(asyncio.run(run(repo, config, args.requests, r)))
    base = statistics.median(times["off"])
    print(f"{args.requests} batch-1 requests per run, {args.rounds} rounds (median CPU us"
          " per request; ratio to off)")
    for config in CONFIGS:
        t = statistics.median(times[config])
        spread = " ".join(f"{x * 1e6:.1f}" for x in times[config])
        print(f"  {config:<13} {t * 1e6:7.2f} us  {t / base:5.3f}x   rounds: {spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
