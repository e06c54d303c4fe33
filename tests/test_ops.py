"""Running it as a sidecar: Prometheus metrics, access logs, graceful shutdown."""

from __future__ import annotations

import queue
import signal
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import make_models
import numpy as np
import pytest
from conftest import ServerProcess
from helpers import client, control_stub, infer_input, raw_request, status_of, stub, wait_until
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from sidecar.rpc.proto import control_pb2 as cpb

X = np.ones((1, 4), np.float32)


def scrape(srv: ServerProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = urllib.request.urlopen(f"http://{srv.metrics_address}/metrics", timeout=10).read()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_requests_versions_and_changes(start_server: Any,
                                                     standard_repo: Path) -> None:
    """/metrics counts calls by model and code (unknown models under one label), runs
    and latency by version, names the active version with its digest, and counts
    swaps by action and actor."""
    srv = start_server(standard_repo)
    c = client(srv.address)
    for _ in range(7):
        c.infer("tiny", [infer_input("INPUT0", X, "FP32")])
    for name in ("nosuch", "other"):
        status_of(lambda n=name: c.infer(n, [infer_input("INPUT0", X, "FP32")]))
    status_of(lambda: c.infer("tiny", [infer_input("WRONG", X, "FP32")]))
    control_stub(srv.control_address).Rollback(cpb.RollbackRequest(model="tiny"), timeout=10)
    m = scrape(srv)
    assert value(m, "sidecar_grpc_requests_total", model="tiny", code="OK") == 7
    assert value(m, "sidecar_grpc_requests_total", model="tiny", code="INVALID_ARGUMENT") == 1
    assert value(m, "sidecar_grpc_requests_total", model="_unknown", code="NOT_FOUND") == 2
    assert value(m, "sidecar_inference_total", model="tiny", version="2",
                 outcome="success") == 7
    assert value(m, "sidecar_inference_latency_seconds_count", model="tiny", version="2") == 7
    assert value(m, "sidecar_inference_latency_seconds_bucket", model="tiny", version="2",
                 le="+Inf") == 7
    active = [labels for (name, labels) in m if name == "sidecar_active_version_info"
              and ("model", "tiny") in labels]
    assert active and ("version", "1") in active[0]
    assert any(k == "digest" and len(v) == 64 for k, v in active[0])
    assert value(m, "sidecar_events_total", model="tiny", action="rollback", actor="rpc") == 1
    assert value(m, "sidecar_version_state", model="tiny", version="2", state="PREVIOUS") == 1
    assert value(m, "process_resident_memory_bytes") > 0


def test_access_log_is_off_by_default_and_on_by_flag(start_server: Any,
                                                     standard_repo: Path) -> None:
    """No line per request by default; --access-log writes one per request with
    model, version, id, code and time."""
    quiet = start_server(standard_repo)
    client(quiet.address).infer("tiny", [infer_input("INPUT0", X, "FP32")], request_id="q")
    loud = start_server(standard_repo, "--access-log")
    client(loud.address).infer("tiny", [infer_input("INPUT0", X, "FP32")], request_id="r1")
    line = loud.wait_for("infer", timeout=30, id="r1")
    assert (line["model"], line["version"], line["code"]) == ("tiny", "2", "OK")
    assert line["ms"] >= 0 and line["logger"] == "sidecar.access"
    assert quiet.stop() == 0
    assert not [r for r in quiet.log if r.get("logger") == "sidecar.access"]


class HeldCall:
    """A ModelStreamInfer call kept open: a call in flight that only ends when the
    test closes it, so the server's grace period waits for it as long as needed."""

    def __init__(self, address: str, model: str) -> None:
        self._model, self._sent = model, 0
        self._channel = grpc.insecure_channel(address)
        self._requests: queue.Queue[Any] = queue.Queue()
        self._replies = stub(self._channel).ModelStreamInfer(
            iter(self._requests.get, None), timeout=120)

    def ask(self) -> str:
        """One more request on the call; returns the version that answered it."""
        self._sent += 1
        self._requests.put(raw_request(self._model, [("INPUT0", "FP32", X)],
                                       id=f"held-{self._sent}"))
        reply = next(self._replies)
        assert not reply.error_message, reply.error_message
        assert reply.infer_response.id == f"held-{self._sent}"
        return str(reply.infer_response.model_version)

    def close(self) -> None:
        """End the call (the client half-closes) and wait until the server ended it."""
        self._requests.put(None)
        assert list(self._replies) == []
        self._channel.close()


def refused(address: str, timeout: float = 30.0) -> tuple[str, str]:
    """Status and message of the first new call that fails: between "stopping" and
    the servers' stop, calls are still taken, so keep calling until one is refused."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client(address).infer("slow", [infer_input("INPUT0", X, "FP32")])
        except InferenceServerException as exc:
            return str(exc.status()).removeprefix("StatusCode."), exc.message()
    raise AssertionError(f"new calls still taken {timeout}s after SIGTERM")


def test_sigterm_drains_requests_in_flight_and_exits_0(start_server: Any, tmp_path: Path
                                                       ) -> None:
    """SIGTERM under load: the slow requests already accepted all finish
    successfully; new calls are refused by the live process (a call held open keeps
    it in its grace period, and answers again after the refusal); exit code 0."""
    repo = tmp_path / "repo"
    make_models.write_model(make_models.slow_model(1), repo, "slow", 1)
    srv = start_server(repo, "--inference-threads", "4", "--grace-s", "60")
    x = np.ones((8192, 4), np.float32)  # ~0.3 s of compute per request

    def slow(_: int) -> str:
        result = client(srv.address).infer("slow", [infer_input("INPUT0", x, "FP32")],
                                           client_timeout=120)
        return str(result.get_response().model_version)

    control = control_stub(srv.control_address)

    def inflight() -> int:
        versions = control.ListVersions(cpb.ListVersionsRequest(model="slow"), timeout=10)
        return sum(v.counters.inflight for v in versions.versions)

    held = HeldCall(srv.address, "slow")
    assert held.ask() == "1"
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(slow, i) for i in range(4)]
        wait_until(lambda: inflight() >= 3, what="slow requests in flight")
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_for("stopping", timeout=30)
        answers = [f.result(timeout=120) for f in futures]
    assert answers == ["1"] * 4
    code, _ = refused(srv.address)
    assert code == "UNAVAILABLE"
    # The process that refused it is alive, still in its grace period: it answers
    # the call in flight, then stops once that call ends.
    assert srv.proc.poll() is None
    assert held.ask() == "1"
    assert srv.proc.poll() is None
    held.close()
    assert srv.stop() == 0
    events = [r.get("event") for r in srv.log]
    assert events.index("stopping") < events.index("stopped")


@pytest.mark.parametrize("repeat", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_repeated_signals_during_shutdown_still_exit_0(start_server: Any, tmp_path: Path,
                                                       repeat: signal.Signals) -> None:
    """SIGTERM, then more SIGTERMs (or SIGINTs) all through the graceful shutdown
    and the process's exit: the call in flight is still answered between them,
    the extra signals are logged as ignored, and the exit code is 0."""
    repo = tmp_path / "repo"
    make_models.write_model(make_models.tiny_model(1), repo, "tiny", 1)
    srv = start_server(repo, "--grace-s", "60")
    held = HeldCall(srv.address, "tiny")
    assert held.ask() == "1"
    srv.proc.send_signal(signal.SIGTERM)
    srv.wait_for("stopping", timeout=30)
    for _ in range(20):  # the grace period waits for the held call meanwhile
        srv.proc.send_signal(repeat)
        assert held.ask() == "1"
    held.close()  # the process now stops and exits: keep signalling until it is gone
    deadline = time.monotonic() + 60
    while srv.proc.poll() is None:
        assert time.monotonic() < deadline, "the process did not exit within 60 s"
        srv.proc.send_signal(repeat)
        try:
            srv.proc.wait(timeout=0.001)
        except subprocess.TimeoutExpired:
            pass
    assert srv.proc.returncode == 0, srv.proc.stderr.read() if srv.proc.stderr else ""
    srv.wait_for("stopped", timeout=30)
    assert any(r.get("event") == "signal ignored" for r in srv.log)
