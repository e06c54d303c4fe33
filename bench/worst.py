"""The worst request of each kind: how long it takes, and what it does to others.

A hostile or broken client must never freeze the server: this script sends the
costliest request of each kind the default limits let through, one at a time,
while a second client runs health checks in a tight loop on its own channel.
Per request it prints the status and time of the answer and the health checks'
p50/max latency meanwhile (a frozen event loop shows as a max near the
request's own time). The baseline is an idle server's health-check latency,
measured in the same run.

    python bench/worst.py [--quick] [--max-message-mb N]
"""

from __future__ import annotations

import argparse
import os
import struct
import threading
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import models
from harness.server import Sidecar, scratch
from harness.stats import fmt, pct, table

from sidecar.rpc.proto import inference_pb2 as pb

Build = Callable[[int], bytes]


class HealthProbe:
    """Health checks in a loop on their own channel; their latencies in ms."""

    def __init__(self, address: str) -> None:
        self._stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
        self._stop = threading.Event()
        self.ms: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            self._stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=120)
            self.ms.append((time.perf_counter() - start) * 1e3)

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return self.ms


def _bytes_tensor(model: str, name: str, count: int) -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype="BYTES", shape=[count])
    request.raw_input_contents.append(struct.pack("<I", 0) * count)
    return request.SerializeToString()


def _one_letter(model: str, name: str, count: int) -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype="BYTES", shape=[count])
    request.raw_input_contents.append((struct.pack("<I", 1) + b"a") * count)
    return request.SerializeToString()


def _fp32(model: str, shape: list[int], nbytes: int) -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=shape)
    request.raw_input_contents.append(b"\0" * nbytes)
    return request.SerializeToString()


def cases(limit: int) -> dict[str, bytes]:
    """Each kind of request at the largest size the message limit allows."""
    room = limit - 1024
    return {
        "BYTES, zero-length elements, unknown model": _bytes_tensor("nope", "TEXT", room // 4),
        "BYTES, zero-length elements, text model": _bytes_tensor("text", "TEXT", room // 4),
        "BYTES, 1,048,576 one-letter elements (the cap), text model":
            _one_letter("text", "TEXT", 1 << 20),
        "FP32 raw, wrong byte count for tiny": _fp32("tiny", [1, 4], room),
        "FP32 raw, huge batch for tiny": _fp32("tiny", [room // 16, 4], room // 16 * 16),
        "100-dimension shape": _fp32("tiny", [1] * 100, 4),
        "random bytes as the payload": os.urandom(1 << 20),
    }


def send(channel: grpc.Channel, payload: bytes) -> tuple[str, float]:
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                               request_serializer=None, response_deserializer=None)
    start = time.perf_counter()
    try:
        call(payload, timeout=300)
        code = "OK"
    except grpc.RpcError as exc:
        code = exc.code().name
    return code, (time.perf_counter() - start) * 1e3


def run(args: argparse.Namespace) -> None:
    limit = args.max_message_mb * (1 << 20)
    with scratch("worst-") as root:
        repo = root / "repo"
        models.write_model(models.tiny_model(1), repo, "tiny", 1)
        models.write_model(models.text_model(), repo, "text", 1)
        server = Sidecar(repo, "--no-watch", "--max-message-mb", str(args.max_message_mb))
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        try:
            probe = HealthProbe(server.address)
            time.sleep(1.0)  # the idle baseline window
            idle = probe.stop()
            rows = [["(idle server: the baseline)", "-", "-", fmt(pct(idle, 50)),
                     fmt(max(idle))]]
            chosen = cases(limit)
            if args.quick:
                chosen = dict(list(chosen.items())[:2] + list(chosen.items())[-2:])
            for name, payload in chosen.items():
                with grpc.insecure_channel(server.address, options=options) as channel:
                    probe = HealthProbe(server.address)
                    code, ms = send(channel, payload)
                    health = probe.stop() or [0.0]
                rows.append([name, f"{len(payload) / (1 << 20):.1f}", f"{code} in {ms:.0f} ms",
                             fmt(pct(health, 50)), fmt(max(health))])
        finally:
            server.stop()
    table(f"Worst requests (message limit {args.max_message_mb} MiB): the answer, and"
          " health checks meanwhile",
          ["request", "MiB", "answer", "health p50 ms", "health max ms"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="four of the cases")
    parser.add_argument("--max-message-mb", type=int, default=0,
                        help="the server's limit (default: the sidecar's default)")
    args = parser.parse_args()
    if not args.max_message_mb:
        from sidecar.settings import Settings  # the default, whatever it is now
        args.max_message_mb = Settings.__dataclass_fields__["max_message_mb"].default
    run(args)


if __name__ == "__main__":
    main()
