"""The repository watcher, for real: real files, the real watcher (inotify, and
polling), a real server, under inference load from client processes that must
see zero failed requests. Every wait is on the server's event stream."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import make_models
import numpy as np
import pytest
from conftest import ServerProcess
from helpers import (
    EventStream,
    client,
    control_stub,
    infer_input,
    start_hammers,
    stop_hammers,
    tiny_expected,
)

from sidecar.rpc.proto import control_pb2 as cpb

SETTLE_MS = 300
LOADED_MODELS = ("copy", "rename", "corrupt", "deleted", "burst", "pinned", "policy")


def tiny_bytes(version: int) -> bytes:
    return make_models.tiny_model(version).SerializeToString()


def publish(repo: Path, model: str, version: int, data: bytes | None = None) -> Path:
    """The safe way to publish: write under a hidden name, rename into place."""
    staging = repo / model / f".staging-{version}"
    staging.mkdir(parents=True)
    (staging / "model.onnx").write_bytes(tiny_bytes(version) if data is None else data)
    target = repo / model / str(version)
    staging.rename(target)
    return target


class Watched:
    def __init__(self, server: ServerProcess, events: EventStream) -> None:
        self.server, self.events, self.repo = server, events, server.repo

    def active(self, model: str) -> int:
        models = control_stub(self.server.control_address).ListModels(
            cpb.ListModelsRequest(), timeout=10).models
        return next((m.active.number for m in models if m.name == model), 0)


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    """One watched server; every model starts with tiny versions 1 and 2, and client
    processes hammer all of them for the whole module."""
    repo = tmp_path_factory.mktemp("watched")
    for model in (*LOADED_MODELS, "gone"):
        for version in (1, 2):
            make_models.write_model(make_models.tiny_model(version), repo, model, version)
    (repo / "policy" / "sidecar.json").write_text('{"on_new_version": "load"}')
    # --no-guard: these tests are about the watcher; on a loaded machine the guard
    # could (rightly, by its rules) roll back a version on one slow request and
    # quarantine bytes every model here shares. The guard has its own tests.
    server = ServerProcess(repo, "--watch-settle-ms", str(SETTLE_MS), "--no-guard")
    events = EventStream(server.control_address)
    stop, _, results, procs = start_hammers(server.address, 2, LOADED_MODELS)
    try:
        yield Watched(server, events)
    finally:
        totals = stop_hammers(stop, results, procs)
        events.close()
        assert server.stop() == 0
    errors = [k for k in totals if k.startswith("first_error")]
    assert totals.get("failed", 0) == 0 and totals.get("wrong", 0) == 0, (totals, errors)
    assert totals["ok"] > 100


def test_slow_chunked_copy_is_loaded_only_when_complete(watched: Watched) -> None:
    """A model file written in chunks, with pauses shorter than the settle time, is
    not loaded (nor failed) while incomplete; once complete, it is activated."""
    data = tiny_bytes(3)
    folder = watched.repo / "copy" / "3"
    folder.mkdir()
    with (folder / "model.onnx").open("wb") as f:
        for start in range(0, len(data), 40):
            f.write(data[start:start + 40])
            f.flush()
            os.fsync(f.fileno())
            time.sleep(SETTLE_MS / 1000 / 4)  # the slow writer being simulated
    last_byte = time.time()
    event = watched.events.wait_for(model="copy", action="activate", to=3)
    assert event.actor == "watcher" and event.time >= last_byte
    assert not [e for e in watched.events.of("copy") if e.action == "load-failed"]
    assert watched.active("copy") == 3


def test_atomic_directory_rename_is_activated(watched: Watched) -> None:
    """A version folder renamed into place is activated; the old active is previous."""
    publish(watched.repo, "rename", 3)
    event = watched.events.wait_for(model="rename", action="activate", to=3)
    assert event.from_version.number == 2


def test_corrupt_file_fails_then_is_retried_when_it_changes(watched: Watched) -> None:
    """A corrupt version is FAILED with its reason and the active version keeps
    serving; when the file is replaced by a good one, it is loaded and activated."""
    publish(watched.repo, "corrupt", 3, b"definitely not an onnx model" * 20)
    failed = watched.events.wait_for(model="corrupt", action="load-failed", to=3)
    assert "cannot load" in failed.reason
    assert watched.active("corrupt") == 2
    tmp = watched.repo / "corrupt" / "3" / "model.onnx.tmp"
    tmp.write_bytes(tiny_bytes(3))
    tmp.rename(watched.repo / "corrupt" / "3" / "model.onnx")
    watched.events.wait_for(model="corrupt", action="activate", to=3)
    assert len([e for e in watched.events.of("corrupt") if e.action == "load-failed"]) == 1


def test_deleting_the_active_version_folder_rolls_back(watched: Watched) -> None:
    """The active version's folder is deleted: the model rolls back to the warm
    previous version (an event names the cause), then the removed one is unloaded;
    the hammering clients see no failure (checked by the fixture)."""
    shutil.rmtree(watched.repo / "deleted" / "2")
    event = watched.events.wait_for(model="deleted", action="activate", to=1)
    assert event.actor == "watcher" and event.from_version.number == 2
    assert "active version 2 removed from the repository" in event.reason
    watched.events.wait_for(model="deleted", action="unload", **{"from": 2})
    x = np.ones((1, 4), np.float32)
    result = client(watched.server.address).infer("deleted", [infer_input("INPUT0", x, "FP32")])
    assert result.get_response().model_version == "1"
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), tiny_expected(x, 1), rtol=1e-6)


def test_a_burst_activates_only_the_newest(watched: Watched) -> None:
    """Ten versions published within a second: only the newest is loaded and
    activated, none of the others is loaded at all."""
    for version in range(3, 13):
        publish(watched.repo, "burst", version)
    watched.events.wait_for(model="burst", action="activate", to=12)
    changes = [(e.action, e.to_version.number) for e in watched.events.of("burst")
               if e.action in {"activate", "load", "load-failed"}]
    assert changes == [("activate", 12)]


def test_a_pinned_model_is_not_changed(watched: Watched) -> None:
    """A pinned model's new version is noted, not activated."""
    control_stub(watched.server.control_address).Pin(cpb.PinRequest(model="pinned"),
                                                     timeout=10)
    publish(watched.repo, "pinned", 3)
    note = watched.events.wait_for(model="pinned", action="watch-note", to=3)
    assert "pinned" in note.reason
    assert watched.active("pinned") == 2


def test_policy_load_keeps_the_new_version_warm(watched: Watched) -> None:
    """With sidecar.json {"on_new_version": "load"}, a new version is loaded warm
    and waits for a command."""
    publish(watched.repo, "policy", 3)
    watched.events.wait_for(model="policy", action="load", to=3)
    assert watched.active("policy") == 2
    versions = control_stub(watched.server.control_address).ListVersions(
        cpb.ListVersionsRequest(model="policy"), timeout=10).versions
    assert {v.number: v.state for v in versions}[3] == "WARM"


def test_new_and_removed_model_folders(watched: Watched) -> None:
    """A new model folder is served; a removed one is unloaded (after draining)."""
    staging = watched.repo / ".new-model"
    make_models.write_model(make_models.tiny_model(1), staging, "fresh", 1)
    (staging / "fresh").rename(watched.repo / "fresh")
    watched.events.wait_for(model="fresh", action="activate", to=1)
    shutil.rmtree(watched.repo / "gone")
    watched.events.wait_for(model="gone", action="unload")
    c = client(watched.server.address)
    assert c.is_model_ready("fresh") and not c.is_model_ready("gone")


def _configmap_repo(root: Path, versions: tuple[int, ...], stamp: str) -> None:
    """Kubernetes' atomic-writer layout: data in ..<stamp>/, ..data links to it,
    and each visible entry links through ..data."""
    for version in versions:
        make_models.write_model(make_models.tiny_model(version), root / f"..{stamp}",
                                "tiny", version)
    tmp = root / "..data_tmp"
    tmp.symlink_to(f"..{stamp}")
    os.replace(tmp, root / "..data")  # the atomic swap
    if not (root / "tiny").is_symlink():
        (root / "tiny").symlink_to("..data/tiny")


def test_configmap_data_symlink_swap(start_server: Any, tmp_path: Path) -> None:
    """Swapping the ..data link to a new timestamped folder activates its new version."""
    repo = tmp_path / "cm"
    repo.mkdir()
    _configmap_repo(repo, (1, 2), "2026_11_23_10_00_00.1")
    srv = start_server(repo, "--watch-settle-ms", str(SETTLE_MS))
    events = EventStream(srv.control_address)
    try:
        _configmap_repo(repo, (1, 2, 3), "2026_11_23_10_05_00.2")
        events.wait_for(model="tiny", action="activate", to=3)
    finally:
        events.close()


def test_git_sync_root_symlink_swap(start_server: Any, tmp_path: Path) -> None:
    """The repository root is a link that git-sync swaps to a new checkout: the
    watcher follows it and activates the new version."""
    for rev, versions in (("rev1", (1, 2)), ("rev2", (1, 2, 3))):
        for version in versions:
            make_models.write_model(make_models.tiny_model(version), tmp_path / rev, "tiny",
                                    version)
    root = tmp_path / "models"
    root.symlink_to("rev1")
    srv = start_server(root, "--watch-settle-ms", str(SETTLE_MS))
    events = EventStream(srv.control_address)
    try:
        tmp = tmp_path / "models.tmp"
        tmp.symlink_to("rev2")
        os.replace(tmp, root)
        events.wait_for(model="tiny", action="activate", to=3)
    finally:
        events.close()


def test_polling_mode(start_server: Any, tmp_path: Path) -> None:
    """With --watch-poll (no inotify), a new version is found and activated."""
    repo = tmp_path / "repo"
    for version in (1, 2):
        make_models.write_model(make_models.tiny_model(version), repo, "tiny", version)
    srv = start_server(repo, "--watch-poll", "--watch-poll-ms", "100",
                       "--watch-settle-ms", str(SETTLE_MS))
    events = EventStream(srv.control_address)
    try:
        publish(repo, "tiny", 3)
        events.wait_for(model="tiny", action="activate", to=3)
        assert any(r.get("event") == "watching" and r.get("polling") for r in srv.log)
    finally:
        events.close()


def test_no_watch_leaves_new_versions_alone(start_server: Any, tmp_path: Path) -> None:
    """With --no-watch, a new version on disk changes nothing until a command.

    A watched server on the same repository is the yardstick: once it has
    activated the new version, a watcher would have (the unwatched one is given
    the shorter settle time), yet version 2 still answers; then a command
    activates version 3, and no event of the unwatched server came from a watcher."""
    repo = tmp_path / "repo"
    for version in (1, 2):
        make_models.write_model(make_models.tiny_model(version), repo, "tiny", version)
    srv = start_server(repo, "--no-watch", "--watch-settle-ms", "50")
    yardstick = start_server(repo, "--watch-settle-ms", str(SETTLE_MS))
    events, watched_events = EventStream(srv.control_address), EventStream(
        yardstick.control_address)
    x = np.ones((1, 4), np.float32)
    c = client(srv.address)
    try:
        publish(repo, "tiny", 3)
        watched_events.wait_for(model="tiny", action="activate", to=3)
        result = c.infer("tiny", [infer_input("INPUT0", x, "FP32")])
        assert result.get_response().model_version == "2"
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), tiny_expected(x, 2), rtol=1e-5)
        stub = control_stub(srv.control_address)
        assert [m.active.number for m in stub.ListModels(cpb.ListModelsRequest(),
                                                          timeout=10).models] == [2]
        stub.Activate(cpb.ActivateRequest(model="tiny", version="3"), timeout=30)
        command = events.wait_for(model="tiny", action="activate", to=3)
        result = c.infer("tiny", [infer_input("INPUT0", x, "FP32")])
        assert result.get_response().model_version == "3"
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), tiny_expected(x, 3), rtol=1e-5)
        # Events arrive in order: a watcher's would have come before the command's.
        assert command.actor != "watcher"
        assert not [e for e in events.of("tiny") if e.actor == "watcher"]
    finally:
        events.close()
        watched_events.close()
    assert not any(r.get("event") == "watching" for r in srv.log)


def test_guard_settings_in_the_model_file_take_effect(watched: Watched) -> None:
    """A "guard" object added to a model's sidecar.json applies without a restart."""
    path = watched.repo / "policy" / "sidecar.json"
    tmp = path.with_name("sidecar.json.tmp")
    tmp.write_text('{"on_new_version": "load", "guard": {"max_error_ratio": 0.25}}')
    tmp.rename(path)
    stub = control_stub(watched.server.control_address)
    event = watched.events.wait_for(model="policy", action="guard-settings", actor="watcher")
    assert event.details["max_error_ratio"] == "0.25"
    assert stub.GetGuard(cpb.GetGuardRequest(model="policy"), timeout=10).settings[
        "max_error_ratio"] == "0.25"
    assert stub.GetGuard(cpb.GetGuardRequest(model="policy"), timeout=10).overrides == {}
