"""The model repository as a git repository, for real: real `git` commands on a
real clone that the sidecar watches (updated in place with pull, revert,
checkout, reset), and git-sync's layout (a worktree per commit behind a
symlink swapped atomically), with client processes hammering every model for
the whole module: not one request may fail. Every wait is on the event stream.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.request
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
    wait_until,
)

from sidecar.rpc.proto import control_pb2 as cpb

SETTLE_MS = 300
MODELS = ("pulled", "reverted", "rewritten", "declared", "conflict", "pinned")
GIT_ENV = {"GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.com",
           "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.com",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd,
                          env={**os.environ, **GIT_ENV}, capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout.strip()


def tiny_bytes(version: int, note: str = "") -> bytes:
    """tiny_model(version); a `note` changes the bytes, not what it computes."""
    model = make_models.tiny_model(version)
    if note:
        model.doc_string = note
    return model.SerializeToString()


def put(tree: Path, model: str, version: int, data: bytes | None = None) -> None:
    path = tree / model / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tiny_bytes(version) if data is None else data)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Pod:
    """The sidecar watching `pod` (a clone of `origin`); `author` is where people
    commit and push."""

    def __init__(self, server: ServerProcess, events: EventStream, author: Path,
                 pod: Path) -> None:
        self.server, self.events, self.author, self.pod = server, events, author, pod

    def ctl(self) -> Any:
        return control_stub(self.server.control_address)

    def push(self, message: str) -> str:
        git(self.author, "add", "-A")
        git(self.author, "commit", "-q", "-m", message)
        git(self.author, "push", "-q", "origin", "main")
        return git(self.author, "rev-parse", "HEAD")

    def pull(self) -> None:
        git(self.pod, "pull", "-q", "--ff-only", "origin", "main")

    def share(self) -> None:
        """Commits made in the watched clone go to origin and the author's clone."""
        git(self.pod, "push", "-q", "origin", "HEAD:main")
        git(self.author, "pull", "-q", "--ff-only", "origin", "main")

    def version(self, model: str, number: int) -> Any:
        versions = self.ctl().ListVersions(cpb.ListVersionsRequest(model=model),
                                           timeout=10).versions
        return next(v for v in versions if v.number == number)

    def model(self, model: str) -> Any:
        models = self.ctl().Status(cpb.StatusRequest(), timeout=10).models
        return next(m for m in models if m.name == model)

    def answers(self, model: str) -> int:
        x = np.ones((1, 4), np.float32)
        result = client(self.server.address).infer(model, [infer_input("INPUT0", x, "FP32")])
        version = int(result.get_response().model_version)
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), tiny_expected(x, version),
                                   rtol=1e-5, atol=1e-6)
        return version


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    """origin (bare), author (a clone people commit in), pod (a clone the sidecar
    watches, changed in place by git); every model has tiny versions 1 and 2."""
    root = tmp_path_factory.mktemp("gitops")
    origin, author, tree = root / "origin.git", root / "author", root / "pod"
    git(root, "init", "-q", "--bare", str(origin))
    git(root, "clone", "-q", str(origin), str(author))
    for model in MODELS:
        for version in (1, 2):
            put(author, model, version)
    Pod(None, None, author, tree).push("models, versions 1 and 2")  # type: ignore[arg-type]
    git(root, "clone", "-q", str(origin), str(tree))
    server = ServerProcess(tree, "--watch-settle-ms", str(SETTLE_MS), "--no-guard")
    events = EventStream(server.control_address)
    stop, _, results, procs = start_hammers(server.address, 2, MODELS)
    try:
        yield Pod(server, events, author, tree)
    finally:
        totals = stop_hammers(stop, results, procs)
        events.close()
        assert server.stop() == 0
    errors = [k for k in totals if k.startswith("first_error")]
    assert totals.get("failed", 0) == 0 and totals.get("wrong", 0) == 0, (totals, errors)
    assert totals["ok"] > 100


def test_a_pulled_version_serves_and_shows_its_commit(pod: Pod) -> None:
    """A commit that adds version 3, pulled into the watched clone: version 3 serves;
    `ctl versions` and the activation event name the commit that added it."""
    put(pod.author, "pulled", 3)
    sha = pod.push("pulled: version 3")
    pod.pull()
    event = pod.events.wait_for(model="pulled", action="activate", to=3)
    assert event.actor == "watcher" and event.details["commit"] == sha
    assert event.details["commit_subject"] == "pulled: version 3"
    info = pod.version("pulled", 3)
    assert info.commit.hash == sha and info.commit.subject == "pulled: version 3"
    assert info.commit.time.endswith("Z") and not info.commit.shallow
    # version 1 came with the first commit, not the latest one
    first = git(pod.pod, "log", "--format=%H", "--", "pulled/1/model.onnx")
    assert pod.version("pulled", 1).commit.hash == first != sha
    assert pod.answers("pulled") == 3


def test_a_git_revert_in_the_watched_tree_rolls_back(pod: Pod) -> None:
    """`git revert` of the commit that added the active version, in the watched
    folder: the model rolls back to the warm previous version with an event naming
    the cause, the removed version is unloaded; reverting the revert serves it again."""
    put(pod.author, "reverted", 3)
    added = pod.push("reverted: version 3")
    pod.pull()
    pod.events.wait_for(model="reverted", action="activate", to=3)
    git(pod.pod, "revert", "--no-edit", added)
    back = pod.events.wait_for(model="reverted", action="activate", to=2)
    assert back.from_version.number == 3 and back.actor == "watcher"
    assert "active version 3 removed from the repository" in back.reason
    pod.events.wait_for(model="reverted", action="unload", **{"from": 3})
    assert pod.answers("reverted") == 2
    git(pod.pod, "revert", "--no-edit", "HEAD")  # the version comes back: new again
    pod.events.wait_for(model="reverted", action="activate", to=3, reason="new version",
                        after=back.seq)
    assert pod.answers("reverted") == 3
    pod.share()


def test_checking_out_an_older_commit_rolls_back(pod: Pod) -> None:
    """`git checkout <older commit>` in the watched folder (detached HEAD) removes
    the newer version from the tree: the model rolls back; checking out main again
    serves it again."""
    put(pod.author, "pulled", 4)
    pod.push("pulled: version 4")
    pod.pull()
    pod.events.wait_for(model="pulled", action="activate", to=4)
    git(pod.pod, "checkout", "-q", "HEAD~1")
    back = pod.events.wait_for(model="pulled", action="activate", to=3,
                               reason="active version 4 removed from the repository:"
                               " rolled back to version 3")
    assert back.from_version.number == 4
    git(pod.pod, "checkout", "-q", "main")
    pod.events.wait_for(model="pulled", action="activate", to=4, reason="new version",
                        after=back.seq)
    assert pod.answers("pulled") == 4


def test_rewritten_bytes_of_a_version_are_a_new_candidate(pod: Pod) -> None:
    """A force-push that changes the bytes of the active version number (same
    number, new digest), taken with `git reset --hard`: the new bytes are loaded,
    checked and swapped in (event `replace`), never ignored."""
    before = pod.version("rewritten", 2).digest
    data = tiny_bytes(2, note="rebuilt with a new exporter")
    put(pod.author, "rewritten", 2, data)
    git(pod.author, "add", "-A")
    git(pod.author, "commit", "-q", "--amend", "-m", "models, versions 1 and 2 (rebuilt)")
    git(pod.author, "push", "-q", "--force", "origin", "main")
    git(pod.pod, "fetch", "-q", "origin")
    git(pod.pod, "reset", "-q", "--hard", "origin/main")
    event = pod.events.wait_for(model="rewritten", action="replace", to=2)
    assert event.from_version.digest == before and event.to_version.digest == sha256(data)
    assert event.details["role"] == "active"
    info = pod.version("rewritten", 2)
    assert info.digest == sha256(data) and info.state == "ACTIVE"
    assert pod.answers("rewritten") == 2


def test_serve_declared_in_git_then_removed(pod: Pod) -> None:
    """`"serve": 1` committed in the model's sidecar.json: version 1 serves (by
    number, then by digest); the key removed: the newest version serves again."""
    path = pod.author / "declared" / "sidecar.json"
    path.write_text(json.dumps({"serve": 1}))
    pod.push("declared: serve version 1")
    pod.pull()
    event = pod.events.wait_for(model="declared", action="activate", to=1)
    assert "declared in sidecar.json (serve: 1)" in event.reason
    declaration = pod.model("declared").declaration
    assert (declaration.serve, declaration.applied, declaration.conflict) == ("1", "1", "")
    assert pod.answers("declared") == 1
    path.write_text(json.dumps({"serve": "sha256:" + sha256(tiny_bytes(2))}))
    pod.push("declared: serve version 2 by digest")
    pod.pull()
    pod.events.wait_for(model="declared", action="activate", to=2,
                        reason=f"declared in sidecar.json (serve: {sha256(tiny_bytes(2))})")
    put(pod.author, "declared", 3)
    pod.push("declared: version 3, not served while the declaration holds")
    pod.pull()
    note = pod.events.wait_for(model="declared", action="watch-note", to=3)
    assert "sidecar.json declares serve" in note.reason
    path.unlink()
    pod.push("declared: serve the newest")
    pod.pull()
    pod.events.wait_for(model="declared", action="activate", to=3,
                        reason="serve removed from sidecar.json: the newest version serves")
    wait_until(lambda: not pod.model("declared").HasField("declaration"),
               what="the declaration's removal recorded")
    assert pod.answers("declared") == 3


def _metric(pod: Pod, name: str, model: str) -> float | None:
    with urllib.request.urlopen(f"http://{pod.server.metrics_address}/metrics",
                                timeout=10) as response:
        text = response.read().decode()
    prefix = f'{name}{{model="{model}"}} '
    line = next((x for x in text.splitlines() if x.startswith(prefix)), None)
    return float(line[len(prefix):]) if line else None


def test_a_quarantined_version_is_not_served_even_if_declared(pod: Pod) -> None:
    """The pod's quarantine wins over the repository: a declared version whose bytes
    are quarantined is refused; `ctl status`, an event and a metric show the conflict."""
    # bytes of its own: a quarantine is by digest, and every other model's versions
    # 1 and 2 are the same bytes
    put(pod.author, "conflict", 3, tiny_bytes(3, note="conflict only"))
    (pod.author / "conflict" / "sidecar.json").write_text(json.dumps({"serve": 2}))
    pod.push("conflict: version 3, serve version 2")
    pod.pull()
    pod.events.wait_for(model="conflict", action="watch-note", to=3)
    pod.ctl().Quarantine(cpb.QuarantineRequest(model="conflict", version="3",
                                               reason="bad answers", actor="test"),
                         timeout=10)
    (pod.author / "conflict" / "sidecar.json").write_text(json.dumps({"serve": 3}))
    pod.push("conflict: serve version 3")
    pod.pull()
    event = pod.events.wait_for(model="conflict", action="declaration-conflict")
    assert "quarantined (bad answers)" in event.reason
    declaration = pod.model("conflict").declaration
    assert declaration.serve == "3" and "quarantined" in declaration.conflict
    assert pod.model("conflict").active.number == 2
    assert _metric(pod, "sidecar_declaration_conflict", "conflict") == 1.0
    assert _metric(pod, "sidecar_declaration_conflict", "declared") in (None, 0.0)
    assert pod.answers("conflict") == 2


def test_a_pin_wins_over_a_declaration(pod: Pod) -> None:
    """A model pinned by command is not moved by a declaration; the conflict says so."""
    pod.ctl().Pin(cpb.PinRequest(model="pinned", actor="test"), timeout=10)
    (pod.author / "pinned" / "sidecar.json").write_text(json.dumps({"serve": 1}))
    pod.push("pinned: serve version 1")
    pod.pull()
    note = pod.events.wait_for(model="pinned", action="watch-note")
    assert "pinned" in note.reason
    assert "the model is pinned" in pod.model("pinned").declaration.conflict
    assert pod.answers("pinned") == 2


# ---- git-sync's layout: a worktree per commit, published by a symlink swap ----------------


def publish(root: Path, source: Path) -> str:
    """What git-sync v4 does for a new commit of `source`: fetch it, check it out as
    a detached worktree under .worktrees/<sha>, point `current` at it by renaming a
    new link over the old one (atomic), then remove the old worktree."""
    git(root / "repo", "fetch", "-q", str(source), "main")
    sha = git(root / "repo", "rev-parse", "FETCH_HEAD")
    git(root / "repo", "worktree", "add", "-q", "--detach", f"../.worktrees/{sha}", sha)
    link = root / "current"
    old = os.readlink(link) if link.is_symlink() else ""
    (root / "tmp-link").symlink_to(f".worktrees/{sha}")
    os.replace(root / "tmp-link", link)
    if old:
        git(root / "repo", "worktree", "remove", "--force", str(root / old))
    return sha


def test_git_sync_layout_follows_and_rolls_back_on_revert(
        tmp_path: Path, start_server: Any) -> None:
    """git-sync's publish protocol with real git worktrees: a new commit serves its
    version, a revert commit rolls back, under load with no failed request; each
    version shows the commit of the worktree it came from."""
    author, root = tmp_path / "author", tmp_path / "sync"
    git(tmp_path, "init", "-q", str(author))
    put(author, "synced", 1)
    put(author, "synced", 2)
    git(author, "add", "-A")
    git(author, "commit", "-q", "-m", "synced: versions 1 and 2")
    root.mkdir()
    git(root, "init", "-q", "repo")
    first = publish(root, author)
    server = start_server(root / "current", "--watch-settle-ms", str(SETTLE_MS), "--no-guard")
    events = EventStream(server.control_address)
    stop, _, results, procs = start_hammers(server.address, 1, ("synced",))
    try:
        put(author, "synced", 3)
        git(author, "add", "-A")
        git(author, "commit", "-q", "-m", "synced: version 3")
        added = publish(root, author)
        event = events.wait_for(model="synced", action="activate", to=3)
        assert event.details["commit"] == added
        git(author, "revert", "--no-edit", "HEAD")
        publish(root, author)
        back = events.wait_for(model="synced", action="activate", to=2)
        assert "active version 3 removed from the repository" in back.reason
        versions = control_stub(server.control_address).ListVersions(
            cpb.ListVersionsRequest(model="synced"), timeout=10).versions
        # read in the worktree of the revert: versions 1 and 2 came with the first commit
        assert {v.number: v.commit.hash for v in versions if v.number < 3} == {1: first,
                                                                                2: first}
        assert not [e for e in events.of("synced") if e.action == "replace"]
    finally:
        totals = stop_hammers(stop, results, procs)
        events.close()
    assert totals.get("failed", 0) == 0 and totals.get("wrong", 0) == 0, totals
    assert totals["ok"] > 0


def test_an_applied_declaration_is_not_applied_again_after_a_restart(
        tmp_path: Path, start_server: Any) -> None:
    """Edge-triggered: `serve: 1` applied, then an operator activates version 2; after
    a restart the pod serves 2 (its saved state) and does not re-apply the unchanged
    declaration; the conflict says the pod was moved by a command."""
    repo, state = tmp_path / "repo", tmp_path / "state"
    for version in (1, 2):
        put(repo, "m", version)
    (repo / "m" / "sidecar.json").write_text(json.dumps({"serve": 1}))
    server = start_server(repo, "--watch-settle-ms", str(SETTLE_MS), state_dir=state)
    events = EventStream(server.control_address)
    ctl = control_stub(server.control_address)
    events.wait_for(model="m", action="activate", to=1)
    ctl.Activate(cpb.ActivateRequest(model="m", version="2", actor="test"), timeout=30)
    conflict = events.wait_for(model="m", action="declaration-conflict")
    assert "changed since by a command or the guard" in conflict.reason
    events.close()
    assert server.stop() == 0
    last = conflict.seq  # the event log outlives the restart: look after this
    again = start_server(repo, "--watch-settle-ms", str(SETTLE_MS), state_dir=state)
    events = EventStream(again.control_address)
    try:
        events.wait_for(model="m", action="restore", to=2, after=last)
        events.wait_for(model="m", action="declaration-conflict", after=last)
        model = control_stub(again.control_address).Status(
            cpb.StatusRequest(), timeout=10).models[0]
        assert model.active.number == 2
        assert (model.declaration.serve, model.declaration.applied) == ("1", "1")
        assert not [e for e in events.of("m") if e.action == "activate" and e.seq > last]
    finally:
        events.close()


def test_a_new_model_serves_the_digest_it_declares(tmp_path: Path, start_server: Any) -> None:
    """A model folder that appears with `serve` naming a digest: that version serves,
    not the newest."""
    repo = tmp_path / "repo"
    put(repo, "base", 1)
    server = start_server(repo, "--watch-settle-ms", str(SETTLE_MS))
    events = EventStream(server.control_address)
    try:
        staging = tmp_path / "staging"
        for version in (1, 2, 3):
            put(staging, "fresh", version)
        (staging / "fresh" / "sidecar.json").write_text(
            json.dumps({"serve": sha256(tiny_bytes(2))[:16]}))
        (staging / "fresh").rename(repo / "fresh")
        event = events.wait_for(model="fresh", action="activate", to=2)
        assert "serving the declared version" in event.reason
        assert [e.to_version.number for e in events.of("fresh")
                if e.action == "activate"] == [2]  # never the newest first
        assert control_stub(server.control_address).Status(
            cpb.StatusRequest(), timeout=10).models[1].active.number == 2
    finally:
        events.close()
