"""Restarting after a crash, on the same ports, while clients hold connections.

`kill -9` leaves the server's side of every open connection in TIME_WAIT for a
minute (and each metrics scrape leaves one too: the endpoint closes first). A
restart must bind its ports at once anyway; a port that another live process
listens on must still be refused, with the address in the message.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import make_models
import numpy as np
import pytest
from conftest import ServerProcess
from helpers import raw_request, stub, tiny_expected

from sidecar.rpc.proto import control_pb2 as cpb
from sidecar.rpc.proto import control_pb2_grpc

CYCLES = 5
X = np.ones((1, 4), np.float32)
# The held channels reconnect within 200 ms of the restart instead of grpc's
# default backoff (1 s growing to 2 min), so the test waits on the restart only.
RECONNECT = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
             ("grpc.max_reconnect_backoff_ms", 200)]


def fixed_ports(count: int) -> list[int]:
    """Free ports below the ephemeral range (so no client connection of this host
    takes one as its local port), each with nothing on it, not even TIME_WAIT."""
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ephemeral.read_text().split()[0]) if ephemeral.exists() else 32768
    rng, ports = random.Random(os.getpid()), list[int]()
    while len(ports) < count:
        port = rng.randrange(10000, low)
        with socket.socket() as probe:  # no SO_REUSEADDR: TIME_WAIT counts as taken
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


class HeldClient:
    """One inference and one control channel, kept open across restarts and
    calling both in a loop from a thread.

    Each call remembers the epoch in which it started; the test bumps the epoch
    once the killed process is gone, so a success of the current epoch can only
    come from the restarted process."""

    def __init__(self, address: str, control_address: str) -> None:
        self._data = grpc.insecure_channel(address, options=RECONNECT)
        self._control = grpc.insecure_channel(control_address, options=RECONNECT)
        self._cond = threading.Condition()
        self._epoch = 0
        self._served: dict[int, set[str]] = {}
        self.failures: list[str] = []  # calls cut by a kill
        self.wrong: list[str] = []  # answers that are not tiny version 2's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        infer, control = stub(self._data), control_pb2_grpc.ModelControlStub(self._control)
        request = raw_request("tiny", [("INPUT0", "FP32", X)])
        expected = tiny_expected(X, 2).ravel()
        while not self._stop.is_set():
            with self._cond:
                epoch = self._epoch
            try:
                # wait_for_ready: while the server is down a call waits for the
                # channel to reconnect instead of failing in a busy loop.
                reply = infer.ModelInfer(request, timeout=60, wait_for_ready=True)
                output = np.frombuffer(reply.raw_output_contents[0], np.float32)
                if reply.model_version != "2" or not np.allclose(output, expected, rtol=1e-5):
                    self.wrong.append(f"version {reply.model_version}: {output}")
                    continue
                self._record(epoch, "inference")
                models = control.ListModels(cpb.ListModelsRequest(), timeout=60,
                                            wait_for_ready=True).models
                active = {m.name: m.active.number for m in models}
                if active != {"tiny": 2, "text": 1}:
                    self.wrong.append(f"active versions {active}")
                    continue
                self._record(epoch, "control")
            except grpc.RpcError as exc:  # the kill cuts calls in flight: expected
                self.failures.append(f"{exc.code().name}: {exc.details()}")

    def _record(self, epoch: int, what: str) -> None:
        with self._cond:
            self._served.setdefault(epoch, set()).add(what)
            self._cond.notify_all()

    def next_epoch(self) -> int:
        with self._cond:
            self._epoch += 1
            return self._epoch

    def wait_served(self, epoch: int, timeout: float = 60.0) -> None:
        """Wait until calls started in `epoch` succeeded on both channels."""
        both = {"inference", "control"}
        with self._cond:
            if not self._cond.wait_for(lambda: self._served.get(epoch) == both, timeout):
                raise AssertionError(f"the held channels got no answer in epoch {epoch}"
                                     f" within {timeout}s; last failures {self.failures[-3:]},"
                                     f" wrong answers {self.wrong[-3:]}")

    def close(self) -> None:
        self._stop.set()
        self._data.close()  # cancels a call in flight
        self._control.close()
        self._thread.join(timeout=60)


def scrape(metrics_address: str) -> str:
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    make_models.build_examples(tmp_path / "repo")
    return tmp_path / "repo"


def _kill(proc: ServerProcess) -> None:
    proc.proc.kill()
    assert proc.proc.wait(timeout=60) == -9
    for stream in (proc.proc.stdout, proc.proc.stderr):
        if stream:
            stream.close()


@pytest.mark.slow
def test_restart_after_kill_9_binds_the_same_ports_at_once(repo: Path, tmp_path: Path) -> None:
    """kill -9 while a client holds connections to the inference and control ports
    (and after a metrics scrape), then restart on the same fixed ports: the new
    process binds them at once and serves the held channels, CYCLES times over."""
    ports = fixed_ports(3)
    listen = [f"127.0.0.1:{port}" for port in ports]
    # --crash-limit 0: these kills are the test's, not the model's; the crash-loop
    # guard (tests/test_crashloop.py) would otherwise quarantine tiny's versions.
    args = ("--listen", listen[0], "--control-listen", listen[1],
            "--metrics-listen", listen[2], "--no-watch", "--crash-limit", "0")
    state = tmp_path / "state"
    srv = ServerProcess(repo, *args, state_dir=state)
    held = HeldClient(srv.address, srv.control_address)
    try:
        assert srv.address == listen[0] and srv.control_address == listen[1]
        held.wait_served(0)
        for cycle in range(1, CYCLES + 1):
            assert "sidecar_build_info" in scrape(srv.metrics_address)
            held.wait_served(held.next_epoch())  # calls are going on right now
            _kill(srv)
            epoch = held.next_epoch()  # calls started from here on reach the new process
            srv = ServerProcess(repo, *args, state_dir=state)
            assert (srv.address, srv.control_address, srv.metrics_address) == tuple(listen)
            held.wait_served(epoch)
            assert "sidecar_build_info" in scrape(srv.metrics_address), cycle
            assert any(r.get("event") == "restore" for r in srv.log), cycle
    finally:
        held.close()
        code = srv.stop()
    assert code == 0
    assert not held.wrong, held.wrong[:3]


def _serve_on(repo: Path, flag: str, address: str) -> subprocess.CompletedProcess[str]:
    others = {"--listen": "127.0.0.1:0", "--control-listen": "127.0.0.1:0",
              "--metrics-listen": "127.0.0.1:0", flag: address}
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run(
            [sys.executable, "-m", "sidecar", "serve", "--model-repository", str(repo),
             *(item for pair in others.items() for item in pair)],
            capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("reuse", [False, True], ids=["plain", "reuseaddr"])
@pytest.mark.parametrize("flag", ["--listen", "--control-listen", "--metrics-listen"])
def test_a_port_another_process_listens_on_is_refused(repo: Path, flag: str, reuse: bool
                                                      ) -> None:
    """A socket listening on the port (with or without SO_REUSEADDR, as servers set
    it) makes `sidecar serve` exit 1 with one line naming the address."""
    with socket.socket() as holder:
        if reuse:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        result = _serve_on(repo, flag, address)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        f"sidecar: error: cannot listen on {address}: Address already in use"
        f" (set {flag} to move it)")


def test_a_port_a_live_sidecar_serves_on_is_refused(start_server: Any, repo: Path) -> None:
    """A second sidecar on the first one's inference port exits 1; the first keeps
    serving."""
    first = start_server(repo)
    result = _serve_on(repo, "--listen", first.address)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"sidecar: error: cannot listen on {first.address}: Address already in use"
        " (set --listen to move it)")
    with grpc.insecure_channel(first.address) as channel:
        reply = stub(channel).ModelInfer(raw_request("tiny", [("INPUT0", "FP32", X)]),
                                         timeout=30)
    assert reply.model_version == "2"
