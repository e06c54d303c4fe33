"""Crash and restart the sidecar in a loop, on the same ports, and time each restart.

    python scripts/restart_loop.py [--cycles 20] [--model-repository examples/models]

Each cycle: a client keeps one inference and one control channel open and calls
both in a loop (ModelInfer on `tiny`, ListModels); the metrics endpoint is
scraped; the server gets `kill -9`; a new one starts at once on the same three
fixed ports with the same state directory. Printed per restart: the connections
the killed process left closing (FIN_WAIT, TIME_WAIT) on those ports, and the
time from the new process's start to its `listening` line (ports bound), its
`serving` line (models loaded, ready) and the held client's first answer from
it. Exits 1 if a restart fails (before check_bindable set SO_REUSEADDR, the
first one did: "cannot listen on 127.0.0.1:PORT: Address already in use").
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from sidecar.rpc.proto import control_pb2, control_pb2_grpc, inference_pb2, inference_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
RECONNECT = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
             ("grpc.max_reconnect_backoff_ms", 200)]


def fixed_ports(count: int) -> list[int]:
    """Free ports below the ephemeral range, with nothing on them (not even TIME_WAIT)."""
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ephemeral.read_text().split()[0]) if ephemeral.exists() else 32768
    rng, ports = random.Random(), list[int]()
    while len(ports) < count:
        port = rng.randrange(10000, low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


# TCP states of a connection the killed process's side closed: FIN_WAIT1,
# FIN_WAIT2, TIME_WAIT, CLOSING. Each holds its port until it is gone.
CLOSED_BY_US = {"04", "05", "06", "0B"}


def left_behind(ports: list[int]) -> int:
    """Connections on `ports` that the killed process left closing (Linux /proc)."""
    count = 0
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] in CLOSED_BY_US and int(fields[1].rsplit(":", 1)[1], 16) in ports:
                count += 1
    return count


class Server:
    """A `sidecar serve` process; its JSON log lines arrive with their receipt time."""

    def __init__(self, args: list[str]) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._lines: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._lines.put((time.monotonic(), json.loads(line)))
            except json.JSONDecodeError:
                pass
        self._lines.put((time.monotonic(), {"event": "<exit>"}))

    def wait_for(self, event: str, timeout: float = 60.0) -> float:
        """Seconds from the process's start to the log line `event`."""
        while True:
            at, record = self._lines.get(timeout=timeout)
            if record.get("event") == "<exit>":
                error = self.proc.stderr.read().strip() if self.proc.stderr else ""
                raise RuntimeError(f"exited with {self.proc.wait()} before '{event}': {error}")
            if record.get("event") == event:
                return at - self.started

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


class HeldClient:
    """Keeps one inference and one control channel open, calling both in a loop.

    A call remembers the epoch in which it started; the epoch is bumped once the
    killed process is gone, so an answer of the current epoch comes from the new one."""

    def __init__(self, address: str, control_address: str) -> None:
        self._data = grpc.insecure_channel(address, options=RECONNECT)
        self._control = grpc.insecure_channel(control_address, options=RECONNECT)
        self._cond = threading.Condition()
        self._epoch = 0
        self._answered: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        infer = inference_pb2_grpc.GRPCInferenceServiceStub(self._data)
        control = control_pb2_grpc.ModelControlStub(self._control)
        request = inference_pb2.ModelInferRequest(model_name="tiny")
        request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
        while not self._stop.is_set():
            with self._cond:
                epoch = self._epoch
            try:
                infer.ModelInfer(request, timeout=60, wait_for_ready=True)
                control.ListModels(control_pb2.ListModelsRequest(), timeout=60,
                                   wait_for_ready=True)
            except grpc.RpcError:
                continue  # the kill cuts the calls in flight
            with self._cond:
                self._answered.setdefault(epoch, time.monotonic())
                self._cond.notify_all()

    def next_epoch(self) -> int:
        with self._cond:
            self._epoch += 1
            return self._epoch

    def answered(self, epoch: int, timeout: float = 60.0) -> float:
        """When calls started in `epoch` were first answered on both channels."""
        with self._cond:
            if not self._cond.wait_for(lambda: epoch in self._answered, timeout):
                raise RuntimeError(f"the held client got no answer within {timeout}s")
            return self._answered[epoch]

    def close(self) -> None:
        self._stop.set()
        self._data.close()
        self._control.close()
        self._thread.join(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--model-repository", type=Path, default=ROOT / "examples" / "models")
    args = parser.parse_args()
    ports = fixed_ports(3)
    listen = [f"127.0.0.1:{port}" for port in ports]
    state = Path(tempfile.mkdtemp(prefix="sidecar-restart-"))
    serve = ["--model-repository", str(args.model_repository), "--state-dir", str(state),
             "--listen", listen[0], "--control-listen", listen[1],
             "--metrics-listen", listen[2], "--no-watch", "--log-format", "json",
             # The kills are this script's, not the model's: no crash-loop verdicts.
             "--crash-limit", "0"]
    print(f"ports {', '.join(listen)} (inference, control, metrics); state {state}")
    server = Server(serve)
    server.wait_for("serving")
    client = HeldClient(listen[0], listen[1])
    rows: list[tuple[float, float, float]] = []
    try:
        client.answered(0)
        for cycle in range(1, args.cycles + 1):
            with urllib.request.urlopen(f"http://{listen[2]}/metrics", timeout=10) as reply:
                reply.read()
            client.answered(client.next_epoch())  # calls are going on right now
            server.kill()
            epoch = client.next_epoch()
            waiting = left_behind(ports)
            server = Server(serve)
            try:
                listening = server.wait_for("listening")
                serving = server.wait_for("serving")
            except RuntimeError as exc:
                print(f"restart {cycle:2}/{args.cycles}: FAILED ({waiting} connections left"
                      f" in FIN_WAIT/TIME_WAIT on the ports): {exc}")
                return 1
            answered = client.answered(epoch) - server.started
            rows.append((listening, serving, answered))
            print(f"restart {cycle:2}/{args.cycles}: {waiting:2} left in FIN_WAIT/TIME_WAIT;"
                  f" listening {listening:5.2f} s, serving {serving:5.2f} s,"
                  f" held client answered {answered:5.2f} s")
    finally:
        client.close()
        if server.proc.poll() is None:
            server.proc.terminate()
            server.proc.wait(timeout=60)
        shutil.rmtree(state, ignore_errors=True)
    for i, name in enumerate(("listening", "serving", "held client answered")):
        column = [row[i] for row in rows]
        print(f"{name}: median {statistics.median(column):.2f} s, min {min(column):.2f} s,"
              f" max {max(column):.2f} s")
    print(f"{len(rows)}/{args.cycles} restarts bound their ports at once and served")
    return 0 if len(rows) == args.cycles else 1


if __name__ == "__main__":
    os.chdir(ROOT)
    raise SystemExit(main())
