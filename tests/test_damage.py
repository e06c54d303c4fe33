"""A damaged state directory or repository never stops the sidecar: real servers
started over state files, event logs and model folders damaged on purpose."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import make_models
import numpy as np
import pytest
from conftest import ServerProcess
from helpers import EventStream, client, control_stub, infer_input, stub, tiny_expected
from serverlog import ServerLogError
from test_control import ctl, ctl_json
from tritonclient.grpc import service_pb2 as pb

from sidecar.rpc.proto import control_pb2

Start = Callable[..., ServerProcess]


# ---- helpers ------------------------------------------------------------------------------


@pytest.fixture
def serve(start_server: Start) -> Start:
    """`start_server`, except that a server exiting before it serves fails this test
    alone: its pipes are closed here, not left for a later test's garbage collection."""
    def start(*args: Any, **kwargs: Any) -> ServerProcess:
        try:
            return start_server(*args, **kwargs)
        except ServerLogError as exc:
            tb = exc.__traceback__
            while tb is not None:
                proc = tb.tb_frame.f_locals.get("self")
                if isinstance(proc, ServerProcess):
                    proc.stop()
                tb = tb.tb_next
            message = str(exc)
        pytest.fail(message, pytrace=False)
    return start


def _repo(root: Path, versions: tuple[int, ...] = (1, 2, 3), model: str = "tiny") -> Path:
    for v in versions:
        make_models.write_model(make_models.tiny_model(v), root, model, v)
    return root


def _digest(repo: Path, model: str, version: int) -> str:
    return hashlib.sha256((repo / model / str(version) / "model.onnx").read_bytes()).hexdigest()


def _ready(srv: ServerProcess) -> bool:
    with srv.channel() as channel:
        return bool(stub(channel).ServerReady(pb.ServerReadyRequest()).ready)


def _answering(srv: ServerProcess, model: str = "tiny") -> int:
    """The version that answers a request for `model` (checked against its weights)."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    c = client(srv.address)
    try:
        result = c.infer(model, [infer_input("INPUT0", x, "FP32")])
    finally:
        c.close()
    version = int(result.get_response().model_version)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), tiny_expected(x, version),
                               rtol=1e-5, atol=1e-5)
    return version


def _model(srv: ServerProcess, name: str = "tiny") -> dict[str, Any]:
    (found,) = [m for m in ctl_json(srv.control_address, "models")["models"]
                if m["name"] == name]
    return found  # type: ignore[no-any-return]


def _serving(srv: ServerProcess, name: str = "tiny") -> tuple[int, int, bool]:
    """(active, previous, pinned) of a model, as `ctl models --json` tells it."""
    m = _model(srv, name)
    return (int(m["active"].get("number", 0)), int(m["previous"].get("number", 0)),
            bool(m.get("pinned", False)))


def _quarantined(srv: ServerProcess, model: str = "tiny") -> dict[int, str]:
    versions = ctl_json(srv.control_address, "versions", model)["versions"]
    return {int(v["number"]): v["reason"] for v in versions if v.get("quarantined")}


def _events(srv: ServerProcess) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = ctl_json(srv.control_address, "events", "--limit",
                                            "1000")["events"]
    return listed


def _problems(srv: ServerProcess) -> list[dict[str, Any]]:
    """The server's warning and error log lines so far."""
    return [r for r in srv.log if r.get("level") in ("warning", "error")]


def _seqs_in_file(state_dir: Path) -> list[int]:
    lines = (state_dir / "events.jsonl").read_text().splitlines()
    return [json.loads(line)["seq"] for line in lines if line.strip()]


def _refused(result: subprocess.CompletedProcess[str], code: str) -> str:
    """The one error line of a `sidecar ctl` command that must fail with `code`."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sidecar ctl: error: {code}:"), lines
    return lines[0]


def _valid_state(repo: Path, guard: dict[str, str] | None = None) -> dict[str, Any]:
    """A state file as the sidecar writes it: tiny serves 2 with 1 as previous."""
    return {
        "format": 1, "repository": str(repo.absolute()), "last_seq": 7, "quarantine": {},
        "models": {"tiny": {
            "active": {"number": 2, "digest": _digest(repo, "tiny", 2)},
            "previous": {"number": 1, "digest": _digest(repo, "tiny", 1)},
            "pinned": False, "watermark": 3, "guard": guard or {}, "unloaded": False,
            "probation_until": 0.0, "candidate": None}},
    }


def _with_number(field: str) -> Callable[[Path, Path], None]:
    """Write a valid state file whose `field` (of tiny, or top level) is 1e400."""
    def write(repo: Path, state_dir: Path) -> None:
        data = _valid_state(repo)
        target = data if field in data else data["models"]["tiny"]
        target[field] = 424242.5
        text = json.dumps(data).replace("424242.5", "1e400")
        (state_dir / "state.json").write_text(text)
    return write


def _with_guard(guard: dict[str, str]) -> Callable[[Path, Path], None]:
    def write(repo: Path, state_dir: Path) -> None:
        (state_dir / "state.json").write_text(json.dumps(_valid_state(repo, guard)))
    return write


def _with_bytes(data: bytes) -> Callable[[Path, Path], None]:
    def write(repo: Path, state_dir: Path) -> None:
        (state_dir / "state.json").write_bytes(data)
    return write


def _with_json(change: Callable[[dict[str, Any]], None]) -> Callable[[Path, Path], None]:
    def write(repo: Path, state_dir: Path) -> None:
        data = _valid_state(repo)
        change(data)
        (state_dir / "state.json").write_text(json.dumps(data))
    return write


def _as_directory(repo: Path, state_dir: Path) -> None:
    (state_dir / "state.json").mkdir()
    (state_dir / "state.json" / "inside").write_text("not a state file")


#: (id, how state.json is damaged, whether the file is unreadable as a whole)
STATE_DAMAGE: list[tuple[str, Callable[[Path, Path], None], bool]] = [
    ("watermark-1e400", _with_number("watermark"), True),
    ("last_seq-1e400", _with_number("last_seq"), True),
    ("probation-1e400", _with_number("probation_until"), True),
    ("unknown-guard-key", _with_guard({"no_such_setting": "1"}), False),
    ("invalid-guard-value", _with_guard({"consecutive_failures": "0"}), False),
    ("garbage-bytes", _with_bytes(b"\x00\xff\xfe\x80garbage{{{" * 40), True),
    ("empty-file", _with_bytes(b""), True),
    ("json-array", _with_bytes(b"[1, 2, 3]\n"), True),
    ("a-directory", _as_directory, True),
    ("format-99", _with_json(lambda d: d.update(format=99)), True),
    ("model-entry-a-string", _with_json(lambda d: d["models"].update(tiny="2")), True),
]


# ---- a. a damaged state.json --------------------------------------------------------------


@pytest.mark.parametrize(("damage", "unreadable"), [(d, u) for _, d, u in STATE_DAMAGE],
                         ids=[name for name, _, _ in STATE_DAMAGE])
def test_damaged_state_file_starts_and_serves(
        serve: Start, tmp_path: Path, damage: Callable[[Path, Path], None],
        unreadable: bool) -> None:
    """A damaged state.json never stops the start: the server serves, and an error
    line says what was set aside (the unreadable file as state.json.corrupt-*)."""
    repo = _repo(tmp_path / "repo")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    damage(repo, state_dir)
    srv = serve(repo, state_dir=state_dir)
    assert _ready(srv)
    assert _answering(srv) == _serving(srv)[0]
    problems = _problems(srv)
    if unreadable:
        aside = [r for r in problems if r["event"].startswith("state file unreadable")]
        assert len(aside) == 1 and aside[0]["level"] == "error", problems
        kept = list(state_dir.glob("state.json.corrupt-*"))
        assert [str(p) for p in kept] == [aside[0]["kept_as"]]
        assert (state_dir / "state.json").is_file()  # a new one, saved at start
    else:
        problems = [r for r in problems  # the log is missing: that is said too
                    if r["event"] != "event log shorter than the saved state says;"
                    " numbers skipped"]
        assert {(r["event"], r["model"]) for r in problems} == {
            ("bad guard settings in the saved state; ignored", "tiny")}, problems
        assert _serving(srv)[:2] == (2, 1)  # the rest of the state was restored


# ---- b. a damaged event log ---------------------------------------------------------------


def _event_line(seq: int, **extra: Any) -> bytes:
    event = {"seq": seq, "time": 1_700_000_000.0 + seq, "model": "tiny", "action": "pin",
             "actor": "cli", "reason": f"event {seq}", "from_version": 0, "from_digest": "",
             "to_version": 0, "to_digest": "", "details": {}, **extra}
    return json.dumps(event).encode() + b"\n"


EVENT_DAMAGE = {
    "blank-line": (b"\n", True),
    "garbage-line": (b"\x00\xffnot json at all {{{\n", True),
    "unknown-field": (_event_line(2, from_the_future={"x": 1}), False),
    # A seq no client can be told (ListEvents' seq is a uint64).
    "seq-beyond-64-bits": (_event_line(2**64), True),
}


@pytest.mark.parametrize("kind", list(EVENT_DAMAGE))
def test_damaged_event_log_starts_and_lists_events(serve: Start, tmp_path: Path,
                                                    kind: str) -> None:
    """A blank, garbage, unknown-field or out-of-range line in events.jsonl never stops
    the start; `ctl events --json` lists the readable events, new ones numbered above."""
    line, damaged = EVENT_DAMAGE[kind]
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "events.jsonl").write_bytes(_event_line(1) + line + _event_line(3))
    srv = serve(_repo(tmp_path / "repo"), state_dir=state_dir)
    assert _ready(srv)
    listed = _events(srv)
    old = [e["seq"] for e in listed if e["reason"].startswith("event ")]
    assert old == (["1", "3"] if damaged else ["1", "2", "3"])
    assert all(3 < int(e["seq"]) < 2**64 for e in listed if e["actor"] == "startup")
    skipped = [r for r in _problems(srv) if r["event"] == "skipped damaged event lines"]
    assert [r["lines"] for r in skipped] == ([1] if damaged else [])


def test_saved_last_seq_beyond_64_bits_keeps_events_listable(serve: Start,
                                                              tmp_path: Path) -> None:
    """A state.json whose last_seq no client can be told (2**64) still leaves the
    event log listable: new events get sequence numbers a uint64 can carry."""
    repo = _repo(tmp_path / "repo")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "state.json").write_text(json.dumps({**_valid_state(repo), "last_seq": 2**64}))
    srv = serve(repo, state_dir=state_dir)
    assert _ready(srv) and _answering(srv) in (2, 3)
    result = ctl(srv.control_address, "--json", "events")
    assert result.returncode == 0, result.stderr
    assert all(0 < int(e["seq"]) < 2**64 for e in json.loads(result.stdout)["events"])


# ---- c. an emptied event log --------------------------------------------------------------


def _activate(srv: ServerProcess, version: str) -> None:
    control_stub(srv.control_address).Activate(
        control_pb2.ActivateRequest(model="tiny", version=version, actor="test"))


def _rollback(srv: ServerProcess) -> None:
    control_stub(srv.control_address).Rollback(
        control_pb2.RollbackRequest(model="tiny", actor="test"))


@pytest.mark.parametrize("last", ["a-command", "an-event-that-saves-no-state"])
def test_emptied_event_log_never_reuses_sequence_numbers(serve: Start, tmp_path: Path,
                                                         last: str) -> None:
    """With events.jsonl emptied but state.json kept, new events are numbered above
    every seq the server had handed out before the stop."""
    repo = _repo(tmp_path / "repo")
    state_dir = tmp_path / "state"
    srv = serve(repo, "--no-watch", state_dir=state_dir)
    _activate(srv, "1")
    _activate(srv, "3")
    _rollback(srv)
    if last != "a-command":
        # A version that fails to load: its load-failed event changes no saved state.
        (repo / "tiny" / "4").mkdir()
        (repo / "tiny" / "4" / "model.onnx").write_bytes(b"not an onnx model" * 10)
        with pytest.raises(grpc.RpcError):
            _activate(srv, "4")
    seen = max(int(e["seq"]) for e in _events(srv))
    assert srv.stop() == 0
    assert max(_seqs_in_file(state_dir)) == seen
    (state_dir / "events.jsonl").write_bytes(b"")
    again = serve(repo, "--no-watch", state_dir=state_dir)
    _rollback(again)
    after = [int(e["seq"]) for e in _events(again)]
    assert after and min(after) > seen, (seen, after)
    assert _serving(again)[:2] == (3, 1)


# ---- d. state.json lost after a quarantine and a rollback ----------------------------------


def test_quarantine_survives_a_corrupt_state_file(serve: Start, tmp_path: Path) -> None:
    """A quarantine and a rollback are rebuilt from the event log when state.json is
    garbage: the quarantined version stays quarantined and does not serve."""
    repo = _repo(tmp_path / "repo")
    state_dir = tmp_path / "state"
    srv = serve(repo, state_dir=state_dir)
    _activate(srv, "2")
    _activate(srv, "3")
    assert _serving(srv)[:2] == (3, 2)
    control_stub(srv.control_address).Quarantine(control_pb2.QuarantineRequest(
        model="tiny", version="3", actor="test", reason="wrong answers"))
    _rollback(srv)
    assert _serving(srv)[:2] == (2, 3) and _answering(srv) == 2
    assert srv.stop() == 0
    (state_dir / "state.json").write_bytes(b"\x00garbage, not JSON\xff")
    again = serve(repo, state_dir=state_dir)
    assert _ready(again)
    assert _quarantined(again) == {3: "wrong answers"}
    assert _serving(again)[0] == 2 and _answering(again) == 2
    assert any(r["event"] == "state rebuilt from the event log" for r in _problems(again))
    assert list(state_dir.glob("state.json.corrupt-*"))


# ---- e. a model pinned while broken, fixed on disk ----------------------------------------


def test_model_pinned_while_broken_serves_once_fixed(serve: Start,
                                                      tmp_path: Path) -> None:
    """A model pinned while its only version was garbage serves after a restart once
    the file is fixed, and only then is the server ready."""
    repo = _repo(tmp_path / "repo", (1,))
    broken = repo / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"garbage, not an onnx model" * 10)
    state_dir = tmp_path / "state"
    srv = serve(repo, state_dir=state_dir)
    assert [r["ready"] for r in srv.log if r["event"] == "serving"] == [False]
    assert not _ready(srv)
    assert ctl_json(srv.control_address, "pin", "broken")["pinned"] is True
    assert srv.stop() == 0
    make_models.write_model(make_models.tiny_model(1), repo, "broken", 1)
    again = serve(repo, state_dir=state_dir)
    assert [r["ready"] for r in again.log if r["event"] == "serving"] == [True]
    assert _answering(again, "broken") == 1
    assert _ready(again)
    assert _serving(again, "broken") == (1, 0, True)


# ---- f. a model folder the server cannot read ----------------------------------------------

#: Loaded at the server's start (sitecustomize): drops the capabilities that let
#: root read any file, so the server meets permissions as a non-root user would.
_DROP_DAC = '''
import ctypes

class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]

_libc = ctypes.CDLL(None, use_errno=True)
_header, _data = _Header(0x20080522, 0), (_Data * 2)()
if _libc.capget(ctypes.byref(_header), _data) == 0:
    _mask = ~((1 << 1) | (1 << 2)) & 0xFFFFFFFF  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    _data[0].effective &= _mask
    _data[0].permitted &= _mask
    _data[0].inheritable &= _mask
    if _libc.capset(ctypes.byref(_header), _data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
'''


def test_unreadable_model_folder_is_that_models_problem_only(serve: Start,
                                                             tmp_path: Path) -> None:
    """A model folder the server cannot list is logged and noted, never fatal: the other
    models serve, the watcher still activates another model's new version, and a
    model whose folder becomes unreadable keeps serving."""
    repo = _repo(tmp_path / "repo", (1, 2))
    _repo(repo, (1,), "other")
    _repo(repo, (1,), "bad")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_DROP_DAC)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site),
                                                       os.environ.get("PYTHONPATH")]))}
    (repo / "bad").chmod(0)
    try:
        probe = subprocess.run(
            [sys.executable, "-c", f"import pathlib; list(pathlib.Path({str(repo / 'bad')!r})"
             ".iterdir())"], capture_output=True, text=True, env={**os.environ, **env})
        assert "PermissionError" in probe.stderr, probe
        srv = serve(repo, env=env, state_dir=tmp_path / "state")
        events = EventStream(srv.control_address)
        try:
            assert _answering(srv) == 2 and _answering(srv, "other") == 1
            warned = [r for r in _problems(srv) if r["event"] == "model folder unreadable"]
            assert warned and {r["model"] for r in warned} == {"bad"}, _problems(srv)
            staged = make_models.write_model(make_models.tiny_model(2), tmp_path / "staging",
                                             "other", 2)
            staged.parent.rename(repo / "other" / "2")  # published whole, as docs advise
            events.wait_for(timeout=60, model="other", action="activate", to=2)
            assert _answering(srv, "other") == 2 and _answering(srv) == 2
            events.wait_for(timeout=60, model="bad", action="watch-note")
            (repo / "tiny").chmod(0)  # unreadable while it serves: it keeps serving
            events.wait_for(timeout=60, model="tiny", action="watch-note")
            assert _answering(srv) == 2 and _serving(srv) == (2, 1, False)
        finally:
            events.close()
    finally:
        for name in ("bad", "tiny"):
            (repo / name).chmod(0o755)


# ---- g, h. a full state directory ----------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tiny tmpfs to fill up (skipped where mounting is not permitted)."""
    point = tmp_path / "small"
    point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,nr_inodes=64",
                              "tmpfs", str(point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield point
    subprocess.run(["umount", str(point)], check=True)


def _fill(directory: Path, *, inodes: bool = False) -> None:
    """Fill the file system of `directory` until it is full (and out of inodes)."""
    (directory / "filler").mkdir(exist_ok=True)
    try:
        with open(directory / "filler" / "blocks", "ab") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    n = 0
    while inodes:
        try:
            (directory / "filler" / f"{n}").touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            break
        n += 1


def _free(directory: Path) -> None:
    shutil.rmtree(directory / "filler")


@pytest.mark.parametrize("how", ["blocks-after-a-run", "blocks-and-inodes-after-a-run",
                                 "blocks-and-inodes-fresh"])
def test_full_state_directory_at_start_serves(small_fs: Path, serve: Start,
                                              tmp_path: Path, how: str) -> None:
    """A state directory that is full at start never stops the sidecar: it serves,
    logs an error saying so, and commands answer UNAVAILABLE, nothing changed."""
    repo = _repo(tmp_path / "repo")
    state_dir = small_fs / "state"
    if how.endswith("after-a-run"):
        first = serve(repo, state_dir=state_dir)
        assert first.stop() == 0
    else:
        state_dir.mkdir()
    _fill(small_fs, inodes="inodes" in how)
    srv = serve(repo, state_dir=state_dir)
    assert _ready(srv) and _answering(srv) == 3
    errors = [r for r in _problems(srv) if r["level"] == "error"]
    assert any(r["event"].startswith("state directory is full")
               or "No space left on device" in r.get("reason", "") for r in errors), errors
    line = _refused(ctl(srv.control_address, "pin", "tiny"), "UNAVAILABLE")
    assert "nothing changed" in line
    assert _serving(srv) == (3, 2, False)
    _free(small_fs)


def test_state_directory_full_while_running_changes_nothing(small_fs: Path,
                                                            serve: Start,
                                                            tmp_path: Path) -> None:
    """Commands on a full state directory answer UNAVAILABLE and change nothing;
    once space is freed, a restart serves exactly what served before."""
    repo = _repo(tmp_path / "repo")
    state_dir = small_fs / "state"
    srv = serve(repo, state_dir=state_dir)
    before = _serving(srv)
    assert before == (3, 2, False)
    _fill(small_fs)
    for command in (("pin", "tiny"), ("activate", "tiny", "1")):
        line = _refused(ctl(srv.control_address, *command), "UNAVAILABLE")
        assert "nothing changed" in line, line
        assert _serving(srv) == before and _answering(srv) == 3
    _free(small_fs)
    assert srv.stop() == 0
    again = serve(repo, state_dir=state_dir)
    assert _serving(again) == before and _answering(again) == 3
    assert _ready(again)


def _crash_record(state_dir: Path) -> dict[str, Any]:
    """Which version of each model serving.json says serves (the crash-loop guard's)."""
    data = json.loads((state_dir / "serving.json").read_text())
    return {name: m["version"] for name, m in data["models"].items()}


def test_refused_activate_leaves_the_crash_record_alone(small_fs: Path, serve: Start,
                                                        tmp_path: Path) -> None:
    """An activate refused on a full disk ("nothing changed") leaves the crash-loop
    record naming the version that still serves, once it is saved again."""
    repo = _repo(tmp_path / "repo")
    for v, weights in ((1, 5), (2, 6)):  # bytes of their own: digests differ from tiny's
        make_models.write_model(make_models.tiny_model(weights), repo, "other", v)
    state_dir = small_fs / "state"
    srv = serve(repo, "--no-watch", state_dir=state_dir)
    assert _crash_record(state_dir) == {"tiny": 3, "other": 2}
    _fill(small_fs)
    line = _refused(ctl(srv.control_address, "activate", "tiny", "1"), "UNAVAILABLE")
    assert "nothing changed" in line and _serving(srv)[0] == 3 and _answering(srv) == 3
    _free(small_fs)
    ctl_json(srv.control_address, "activate", "other", "1")  # saves the record again
    assert _crash_record(state_dir) == {"tiny": 3, "other": 1}


def test_refused_command_leaves_the_state_file_as_it_was(small_fs: Path, serve: Start,
                                                         tmp_path: Path) -> None:
    """A command answered UNAVAILABLE ("nothing changed") leaves state.json as it was,
    even when the state file found room and only its event line did not; a restart
    then serves what served before."""
    repo = _repo(tmp_path / "repo")
    state_dir = small_fs / "state"
    srv = serve(repo, "--no-watch", state_dir=state_dir)
    log = state_dir / "events.jsonl"
    pinned = False
    for _ in range(100):  # pin/unpin until the next event line cannot fit its page
        if 4096 - log.stat().st_size % 4096 < 180:
            break
        ctl_json(srv.control_address, "unpin" if pinned else "pin", "tiny")
        pinned = not pinned
    before = (state_dir / "state.json").read_bytes()
    # Someone else holds the page the replaced state.json frees (a hard link here),
    # and one page is left: the new state.json fits, the event line does not.
    os.link(state_dir / "state.json", small_fs / "held")
    _fill(small_fs)
    blocks = small_fs / "filler" / "blocks"
    os.truncate(blocks, blocks.stat().st_size - 4096)
    line = _refused(ctl(srv.control_address, "unpin" if pinned else "pin", "tiny"),
                    "UNAVAILABLE")
    assert "nothing changed" in line and _serving(srv) == (3, 2, pinned)
    # the same state; only the sequence number it records may have moved on (the
    # refused change used one, and numbers never repeat)
    after, old = json.loads((state_dir / "state.json").read_bytes()), json.loads(before)
    assert after.pop("last_seq") >= old.pop("last_seq") and after == old
    _free(small_fs)
    (small_fs / "held").unlink()
    assert srv.stop() == 0
    again = serve(repo, "--no-watch", state_dir=state_dir)
    assert _serving(again) == (3, 2, pinned)
