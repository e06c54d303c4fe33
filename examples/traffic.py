"""Send random inputs to one model of a running sidecar and say, once a second,
which versions answered and how many requests failed.

Needs only what `make run` installs (the sidecar's own generated stubs and
numpy; no tritonclient)::

    .venv/bin/python examples/traffic.py --address 127.0.0.1:8001 --model tiny

Inputs follow the model's metadata: random normal values for numbers (so about
half of tiny's rows have x[:, 0] > 0, what the guard demo's buggy version fails
on), random words for BYTES; dynamic dimensions get `--batch`. It stops after
`--seconds` (0: never) or at Ctrl-C, printing the totals; exit 0. One line per
second, e.g.::

    3s tiny: 200 ok, 0 failed; answered by version 2: 200
    4s tiny: 131 ok, 69 failed (INTERNAL 69); answered by version 2: 40, version 3: 91
"""

from __future__ import annotations

import argparse
import signal
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np

from sidecar.datatypes import WIRE_DTYPES
from sidecar.rpc.proto import inference_pb2 as pb
from sidecar.rpc.proto import inference_pb2_grpc as pb_grpc


def _random_tensor(rng: np.random.Generator, datatype: str, shape: Sequence[int]) -> bytes:
    """Raw contents (little-endian, BYTES length-prefixed) of a random tensor."""
    count = int(np.prod(shape)) if shape else 1
    if datatype == "BYTES":
        words = (bytes(rng.integers(97, 123, size=int(rng.integers(1, 9)), dtype=np.uint8))
                 for _ in range(count))
        return b"".join(struct.pack("<I", len(w)) + w for w in words)
    dtype = WIRE_DTYPES[datatype]
    if dtype.kind == "f":
        values: Any = rng.standard_normal(count)
    elif dtype.kind == "b":
        values = rng.integers(0, 2, count)
    else:
        values = rng.integers(0, 100, count)
    return np.asarray(values).astype(dtype).tobytes()


def request_for(stub: pb_grpc.GRPCInferenceServiceStub, model: str, batch: int,
                rng: np.random.Generator) -> Any:
    """A function that makes a new random ModelInferRequest for the model's inputs."""
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=10)
    inputs = [(t.name, t.datatype, [batch if d < 0 else d for d in t.shape])
              for t in metadata.inputs]

    def make() -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name=model)
        for name, datatype, shape in inputs:
            request.inputs.add(name=name, datatype=datatype, shape=shape)
            request.raw_input_contents.append(_random_tensor(rng, datatype, shape))
        return request

    return make


class Tally:
    """Answers by version and failures by status code, for a second and in all."""

    def __init__(self) -> None:
        self.versions: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()

    def line(self) -> str:
        ok, failed = sum(self.versions.values()), sum(self.failures.values())
        text = f"{ok} ok, {failed} failed"
        if failed:
            text += " (" + ", ".join(f"{c} {n}" for c, n in sorted(self.failures.items())) + ")"
        if ok:
            text += "; answered by " + ", ".join(
                f"version {v}: {n}" for v, n in sorted(self.versions.items(),
                                                        key=lambda item: int(item[0] or 0)))
        return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--address", default="127.0.0.1:8001",
                        help="inference address HOST:PORT [default: 127.0.0.1:8001]")
    parser.add_argument("--model", default="tiny", help="model name [default: tiny]")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="requests per second at most [default: 200]")
    parser.add_argument("--batch", type=int, default=1,
                        help="size of dynamic dimensions [default: 1]")
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="stop after this long (0: at Ctrl-C) [default: 0]")
    parser.add_argument("--seed", type=int, default=0, help="random seed [default: 0]")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rng = np.random.default_rng(args.seed)
    total, second = Tally(), Tally()
    seen: set[str] = set()
    with grpc.insecure_channel(args.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            make = request_for(stub, args.model, args.batch, rng)
        except grpc.RpcError as exc:
            print(f"traffic: error: {args.address} {args.model}: {exc.code().name}:"
                  f" {exc.details()}", file=sys.stderr)
            return 1
        print(f"sending random inputs to {args.model} on {args.address}"
              f" ({args.rate:g}/s; Ctrl-C stops)", flush=True)
        start = time.monotonic()
        end = start + args.seconds if args.seconds > 0 else float("inf")
        next_line, sent = start + 1.0, 0
        while not stop.is_set() and time.monotonic() < end:
            try:
                reply = stub.ModelInfer(make(), timeout=10)
            except grpc.RpcError as exc:
                code = exc.code().name
                for tally in (total, second):
                    tally.failures[code] += 1
                if code not in seen:  # the first message of each kind of failure
                    seen.add(code)
                    print(f"first {code}: {exc.details()}", flush=True)
            else:
                for tally in (total, second):
                    tally.versions[reply.model_version] += 1
            sent += 1
            now = time.monotonic()
            if now >= next_line:
                print(f"{now - start:.0f}s {args.model}: {second.line()}", flush=True)
                second, next_line = Tally(), next_line + 1.0
            # pace: request n goes out at start + n / rate, never in a burst
            stop.wait(max(0.0, start + sent / args.rate - time.monotonic()))
    print(f"total {args.model}: {total.line()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
