"""Running it as a sidecar: Prometheus metrics, access logs, graceful shutdown."""

from __future__ import annotations

import signal
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import make_models
import numpy as np
from conftest import ServerProcess
from helpers import client, control_stub, infer_input, status_of, wait_until
from prometheus_client.parser import text_string_to_metric_families

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


def test_sigterm_drains_requests_in_flight_and_exits_0(start_server: Any, tmp_path: Path
                                                       ) -> None:
    """SIGTERM under load: the slow requests already accepted all finish
    successfully, new calls are refused, and the process exits 0."""
    repo = tmp_path / "repo"
    make_models.write_model(make_models.slow_model(1), repo, "slow", 1)
    srv = start_server(repo, "--inference-threads", "4", "--grace-s", "60")
    x = np.ones((8192, 4), np.float32)  # ~0.3 s of compute per request

    def slow(_: int) -> str:
        result = client(srv.address).infer("slow", [infer_input("INPUT0", x, "FP32")],
                                           client_timeout=120)
        return str(result.get_response().model_version)

    stub = control_stub(srv.control_address)

    def inflight() -> int:
        versions = stub.ListVersions(cpb.ListVersionsRequest(model="slow"), timeout=10)
        return sum(v.counters.inflight for v in versions.versions)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(slow, i) for i in range(4)]
        wait_until(lambda: inflight() >= 3, what="slow requests in flight")
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_for("stopping", timeout=30)
        answers = [f.result(timeout=120) for f in futures]
    assert answers == ["1"] * 4
    code, _ = status_of(lambda: client(srv.address).infer(
        "slow", [infer_input("INPUT0", x[:1], "FP32")]))
    assert code == "UNAVAILABLE"
    assert srv.stop() == 0
    events = [r.get("event") for r in srv.log]
    assert events.index("stopping") < events.index("stopped")
