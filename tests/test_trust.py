"""Issue "Trust the core" from outside: promote is measured, statistics are true,
`--no-guard` keeps nothing, shadow_queue bounds copies, quarantine and candidates
are honoured by ctl, and skipped versions are shown with the way to serve them."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import make_models
import numpy as np
from helpers import client, infer_input
from test_control import ctl, ctl_json

X = np.ones((1, 4), np.float32)


def _repo(root: Path, versions: tuple[int, ...] = (1, 2)) -> Path:
    for v in versions:
        make_models.write_model(make_models.tiny_model(v), root, "tiny", v)
    return root


def _infer(address: str, n: int, version: str = "") -> list[str]:
    c = client(address)
    try:
        return [c.infer("tiny", [infer_input("INPUT0", X, "FP32")], model_version=version)
                .get_response().model_version for _ in range(n)]
    finally:
        c.close()


def _metrics(srv: Any) -> str:
    with urllib.request.urlopen(f"http://{srv.metrics_address}/metrics", timeout=30) as r:
        return str(r.read().decode())


def test_promote_reports_the_measured_swap(start_server: Any, tmp_path: Path) -> None:
    """Promoting a canary answers the swap's real duration, not zeros."""
    srv = start_server(_repo(tmp_path / "r"), "--no-watch")
    ctl_json(srv.control_address, "canary", "tiny", "1", "--weight", "20")
    promoted = ctl_json(srv.control_address, "promote", "tiny")
    assert int(promoted["to_version"]["number"]) == 1
    assert promoted["swap_us"] > 0 and promoted["total_ms"] > 0


def test_statistics_fill_queue_input_and_output(start_server: Any, tmp_path: Path) -> None:
    """ModelStatistics reports decode (compute_input), encode (compute_output) and the
    wait for an inference thread (queue) of every request run in the pool."""
    srv = start_server(_repo(tmp_path / "r"), "--no-watch", "--inline-max-us", "0")
    _infer(srv.address, 5)
    c = client(srv.address)
    stats = c.get_inference_statistics("tiny", "2", as_json=True)["model_stats"][0]
    c.close()
    infer = stats["inference_stats"]
    for field in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert int(infer[field]["count"]) == 5, field
        assert int(infer[field]["ns"]) > 0, field


def test_no_guard_keeps_no_windows(start_server: Any, tmp_path: Path) -> None:
    """With --no-guard no outcome is recorded for the guard: no window exists, and
    `ctl guard` says it is off; with the guard on, the active version has one."""
    off = start_server(_repo(tmp_path / "off"), "--no-watch", "--no-guard")
    on = start_server(_repo(tmp_path / "on"), "--no-watch")
    for srv in (off, on):
        _infer(srv.address, 3)
    assert "sidecar_guard_window{" not in _metrics(off)
    assert 'sidecar_guard_window{figure="requests",model="tiny",version="2"} 3.0' in _metrics(on)
    assert ctl_json(off.control_address, "guard", "tiny")["state"]["enabled"] == "false"


def test_shadow_queue_bounds_the_copies_waiting(start_server: Any, tmp_path: Path) -> None:
    """A model's shadow_queue setting is the number of copies that may wait: with 0
    every copy is dropped and counted, none compared."""
    srv = start_server(_repo(tmp_path / "r"), "--no-watch")
    ctl_json(srv.control_address, "guard", "tiny", "shadow_queue=0")
    ctl_json(srv.control_address, "shadow", "tiny", "1")
    _infer(srv.address, 6)
    figures = ctl_json(srv.control_address, "abort", "tiny")["figures"]
    assert figures["dropped"] == "6" and figures["compared"] == "0"


def test_rollback_to_a_quarantined_version_needs_force(start_server: Any, tmp_path: Path
                                                       ) -> None:
    """`ctl rollback` refuses a quarantined previous version (exit 3 with the reason)
    and rolls back with --force."""
    srv = start_server(_repo(tmp_path / "r"), "--no-watch")
    ctl_json(srv.control_address, "quarantine", "tiny", "1", "--reason", "bad bytes")
    refused = ctl(srv.control_address, "rollback", "tiny")
    assert refused.returncode != 0 and "quarantined" in refused.stderr
    assert _infer(srv.address, 1) == ["2"]
    forced = ctl_json(srv.control_address, "rollback", "tiny", "--force")
    assert int(forced["to_version"]["number"]) == 1
    assert _infer(srv.address, 1) == ["1"]


def test_aborting_a_canary_of_the_previous_keeps_it_warm(start_server: Any, tmp_path: Path
                                                         ) -> None:
    """`ctl canary tiny 1`, `ctl abort tiny`, `ctl rollback tiny`: the previous version
    stayed warm, `ctl models` said so, and the rollback serves it."""
    srv = start_server(_repo(tmp_path / "r"), "--no-watch")
    ctl_json(srv.control_address, "canary", "tiny", "1", "--weight", "20")
    ctl_json(srv.control_address, "abort", "tiny")
    [model] = ctl_json(srv.control_address, "models")["models"]
    assert int(model["previous"]["number"]) == 1 and "1" in model["loaded_versions"]
    assert "canary of version 1 ended" in model["note"]
    ctl_json(srv.control_address, "rollback", "tiny")
    assert _infer(srv.address, 2) == ["1", "1"]


def test_activate_supersedes_a_running_canary_with_an_event(start_server: Any,
                                                            tmp_path: Path) -> None:
    """Activating another version while a canary runs ends the canary explicitly: a
    canary-superseded event and a note in `ctl status`."""
    srv = start_server(_repo(tmp_path / "r", (1, 2, 3)), "--no-watch")
    ctl_json(srv.control_address, "canary", "tiny", "1", "--weight", "50")
    ctl_json(srv.control_address, "activate", "tiny", "2")
    events = ctl_json(srv.control_address, "events", "--model", "tiny")["events"]
    assert "canary-superseded" in [e["action"] for e in events]
    [model] = ctl_json(srv.control_address, "status")["models"]
    assert "superseded by activate of version 2" in model["note"]
    assert not int(model["canary"]["number"])
    assert set(_infer(srv.address, 20)) == {"2"}


def test_a_version_skipped_by_the_watermark_says_how_to_serve_it(start_server: Any,
                                                                 tmp_path: Path) -> None:
    """A version above the active one that the watcher will not activate again (it
    was rolled back from, then unloaded) shows why, and the command that serves it,
    in `ctl versions` and RepositoryIndex."""
    repo = _repo(tmp_path / "r")
    srv = start_server(repo)
    make_models.write_model(make_models.tiny_model(3), repo, "tiny", 3)
    srv.wait_for("activate", timeout=30, model="tiny", actor="watcher", to_version=3)
    assert _infer(srv.address, 1) == ["3"]
    ctl_json(srv.control_address, "rollback", "tiny")
    ctl_json(srv.control_address, "unload", "tiny", "3")
    versions = {int(v["number"]): v for v in
                ctl_json(srv.control_address, "versions", "tiny")["versions"]}
    assert versions[3]["state"] == "UNLOADED"
    assert "sidecar ctl activate tiny 3" in versions[3]["reason"]
    c = client(srv.address)
    rows = {r["version"]: r for r in c.get_model_repository_index(as_json=True)["models"]}
    c.close()
    assert "watermark" in rows["3"]["reason"]


def test_clients_cannot_act_as_the_sidecar(start_server: Any, tmp_path: Path) -> None:
    """`--actor guard` (or watcher, startup, sidecar) is refused: the guard's own
    rollbacks skip probation, and the event log must not misattribute changes."""
    srv = start_server(_repo(tmp_path / "r"), "--no-watch")
    for actor in ("guard", "watcher", "startup", "sidecar"):
        refused = ctl(srv.control_address, "--actor", actor, "activate", "tiny", "1")
        assert refused.returncode == 2 and "the sidecar's own" in refused.stderr, actor
    assert _infer(srv.address, 1) == ["2"]


def test_a_shadow_with_the_guard_off_is_refused(start_server: Any, tmp_path: Path) -> None:
    """With --no-guard a shadow would never get a copy: `ctl shadow` is refused with
    the reason (exit 4), and a canary still starts (it needs no guard)."""
    srv = start_server(_repo(tmp_path / "r"), "--no-watch", "--no-guard")
    refused = ctl(srv.control_address, "shadow", "tiny", "1")
    assert refused.returncode == 4 and "the guard is off" in refused.stderr
    ctl_json(srv.control_address, "canary", "tiny", "1", "--weight", "20")
