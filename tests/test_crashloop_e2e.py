"""The crash-loop guard end to end: real servers killed with SIGKILL (or stopped
with SIGTERM) and started again on the same state directory; what the next start
serves, quarantines and records. Also what else a restart keeps or ends: the
guard's probation, a running canary or shadow, and the listening ports.

Nothing is mocked and nothing sleeps: a test waits for log lines, answers,
events, or (where the server has nothing to wait on) polls serving.json with a
deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import make_models
import numpy as np
import pytest
from conftest import ServerProcess
from helpers import client, control_stub, infer_input, tiny_expected, wait_until
from tritonclient.utils import InferenceServerException

from sidecar.rpc.proto import control_pb2 as cpb

Start = Callable[..., ServerProcess]


# ---- helpers ---------------------------------------------------------------------------


def _repo(root: Path, versions: tuple[int, ...] = (1, 2, 3)) -> Path:
    for v in versions:
        make_models.write_model(make_models.tiny_model(v), root, "tiny", v)
    return root


@pytest.fixture
def servers() -> Iterator[Start]:
    """Start servers that a test may kill; whatever still runs at the end is stopped.

    (conftest's start_server asserts a clean exit of every server, which a killed
    one cannot give.)"""
    started: list[ServerProcess] = []

    def start(repo: Path, state: Path, *args: str, env: dict[str, str] | None = None
              ) -> ServerProcess:
        proc = ServerProcess(repo, *args, state_dir=state, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.proc.poll() is None:
            proc.stop()


def kill9(srv: ServerProcess) -> None:
    """SIGKILL: no handler runs, nothing is flushed or marked clean."""
    os.kill(srv.proc.pid, signal.SIGKILL)
    assert srv.stop() == -signal.SIGKILL


def term(srv: ServerProcess) -> None:
    """SIGTERM: a clean stop (exit 0)."""
    assert srv.stop() == 0, srv.proc.stderr


def record_of(state: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((state / "serving.json").read_text())
    return data


def wait_recorded(state: Path, version: int, *, survived: bool = False,
                  model: str = "tiny", timeout: float = 30.0) -> None:
    """Wait until serving.json says `model` serves `version` (and, with `survived`,
    that it served the whole crash window). The record is written in the background
    after the start; the server has no event to wait on for it."""
    def recorded() -> bool:
        try:
            entry = record_of(state)["models"].get(model)
        except (OSError, ValueError):
            return False  # not written yet (replaced atomically, never torn)
        return (entry is not None and entry["version"] == version
                and (entry["survived"] or not survived))

    wait_until(recorded, timeout, f"serving.json to record {model} v{version}"
               + (" as survived" if survived else ""))


def ctl(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", "ctl", "--address", address, *args],
                          capture_output=True, text=True, timeout=60)


def ctl_json(address: str, *args: str) -> Any:
    result = ctl(address, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def events(srv: ServerProcess, action: str = "") -> list[dict[str, Any]]:
    found = ctl_json(srv.control_address, "events", "--model", "tiny", "--limit", "1000")
    return [e for e in found["events"] if not action or e["action"] == action]


def answering(srv: ServerProcess) -> int:
    """The version that answers a request for tiny (checked against its weights)."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    c = client(srv.address)
    try:
        result = c.infer("tiny", [infer_input("INPUT0", x, "FP32")])
    finally:
        c.close()
    version = int(result.get_response().model_version)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), tiny_expected(x, version),
                               rtol=1e-5, atol=1e-5)
    return version


def active(srv: ServerProcess) -> tuple[int, int]:
    """(active, previous) of tiny, as `ctl models --json` tells it."""
    (tiny,) = [m for m in ctl_json(srv.control_address, "models")["models"]
               if m["name"] == "tiny"]
    return int(tiny["active"].get("number", 0)), int(tiny["previous"].get("number", 0))


def quarantined(srv: ServerProcess) -> dict[int, str]:
    """Version -> reason, for tiny's quarantined versions (`ctl versions tiny --json`)."""
    versions = ctl_json(srv.control_address, "versions", "tiny")["versions"]
    return {int(v["number"]): v["reason"] for v in versions if v["quarantined"]}


def assert_untouched(srv: ServerProcess, version: int = 3) -> None:
    """`version` still serves, nothing is quarantined, no crash loop was recorded."""
    assert answering(srv) == version
    assert active(srv)[0] == version
    assert quarantined(srv) == {}
    assert events(srv, "crash-loop") == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def served_again(c: Any, timeout: float = 30.0) -> int:
    """The version answering `c`, a client whose server was killed and started again
    under it: its channel may still be reconnecting (UNAVAILABLE) at first."""
    x = np.ones((1, 4), np.float32)
    answers: list[int] = []

    def answered() -> bool:
        try:
            result = c.infer("tiny", [infer_input("INPUT0", x, "FP32")], client_timeout=10)
        except InferenceServerException as exc:
            if str(exc.status()) != "StatusCode.UNAVAILABLE":
                raise
            return False
        answers.append(int(result.get_response().model_version))
        return True

    wait_until(answered, timeout, "an answer on the reconnected channel")
    return answers[0]


class Caller:
    """A client thread calling tiny until stopped; each answer is counted (and
    checked against the weights of the version it names), failures are ignored:
    the server it calls is killed and started again under it."""

    def __init__(self, address: str) -> None:
        self.answers: list[int] = []
        self.wrong = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(address,), daemon=True)
        self._thread.start()

    def _run(self, address: str) -> None:
        c = client(address)
        x = np.ones((1, 4), np.float32)
        while not self._stop.is_set():
            try:
                result = c.infer("tiny", [infer_input("INPUT0", x, "FP32")], client_timeout=10)
            except InferenceServerException:
                continue
            version = int(result.get_response().model_version)
            good = np.allclose(result.as_numpy("OUTPUT0"), tiny_expected(x, version),
                               rtol=1e-5, atol=1e-5)
            with self._cond:
                self.answers.append(version)
                self.wrong += not good
                self._cond.notify_all()
        c.close()

    def mark(self) -> int:
        with self._cond:
            return len(self.answers)

    def wait_answer(self, after: int, timeout: float = 60.0) -> int:
        """The version of the first answer after `after` answers; waits for it."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.answers) > after, timeout):
                raise AssertionError(f"no answer within {timeout}s")
            return self.answers[after]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


# ---- the crash-loop rule ------------------------------------------------------------


def test_two_kills_soon_after_serving_roll_back_and_quarantine(servers: Start,
                                                               tmp_path: Path) -> None:
    """Killed twice with SIGKILL soon after version 3 started serving, the third start
    serves the previous version 2, quarantines 3 with a "crash" reason and records a
    crash-loop event by "startup"; a clean restart keeps it that way."""
    repo, state = _repo(tmp_path / "repo"), tmp_path / "state"
    for _ in range(2):
        srv = servers(repo, state)
        assert answering(srv) == 3 and active(srv) == (3, 2)
        wait_recorded(state, 3)
        kill9(srv)
    third = servers(repo, state)
    assert answering(third) == 2
    assert active(third) == (2, 1)
    models = control_stub(third.control_address).ListModels(cpb.ListModelsRequest(), timeout=10)
    (tiny,) = [m for m in models.models if m.name == "tiny"]
    assert tiny.active.number == 2 and tiny.ready
    reasons = quarantined(third)
    assert list(reasons) == [3] and "crash" in reasons[3]
    (loop,) = events(third, "crash-loop")
    assert loop["actor"] == "startup" and "crash" in loop["reason"] and "2 times" in loop["reason"]
    assert loop["from_version"]["number"] == "3" and loop["details"]["count"] == "2"
    assert len(loop["details"]["times"].split(",")) == 2
    assert reasons[3] == loop["reason"]
    term(third)
    again = servers(repo, state)
    assert answering(again) == 2 and list(quarantined(again)) == [3]
    assert len(events(again, "crash-loop")) == 1  # the clean restart added none


def test_a_crash_loop_serves_the_saved_previous_not_the_highest(servers: Start,
                                                                tmp_path: Path) -> None:
    """With version 2 active and 1 previous (3 on disk, loadable), a crash loop of 2
    rolls back to the saved previous version 1, not to the highest loadable 3."""
    repo, state = _repo(tmp_path / "repo"), tmp_path / "state"
    first = servers(repo, state)
    stub = control_stub(first.control_address)
    stub.Activate(cpb.ActivateRequest(model="tiny", version="1"), timeout=30)
    stub.Activate(cpb.ActivateRequest(model="tiny", version="2"), timeout=30)
    assert active(first) == (2, 1)
    wait_recorded(state, 2)
    kill9(first)
    second = servers(repo, state)
    assert answering(second) == 2 and active(second) == (2, 1)
    wait_recorded(state, 2)
    kill9(second)
    third = servers(repo, state)
    assert answering(third) == 1
    assert active(third)[0] == 1
    assert list(quarantined(third)) == [2]
    (loop,) = events(third, "crash-loop")
    assert loop["from_version"]["number"] == "2"


def test_a_single_kill_does_not_roll_back(servers: Start, tmp_path: Path) -> None:
    """One SIGKILL soon after serving is one crash: below the limit of 2, the restart
    serves the same version and quarantines nothing."""
    repo, state = _repo(tmp_path / "repo"), tmp_path / "state"
    srv = servers(repo, state)
    wait_recorded(state, 3)
    kill9(srv)
    again = servers(repo, state)
    assert_untouched(again)
    assert active(again) == (3, 2)


def test_clean_restarts_change_nothing(servers: Start, tmp_path: Path) -> None:
    """Three SIGTERM stops in a row, each soon after serving, mark the record clean:
    the same version serves, nothing is quarantined, no crash loop is recorded."""
    repo, state = _repo(tmp_path / "repo"), tmp_path / "state"
    for _ in range(3):
        srv = servers(repo, state)
        assert answering(srv) == 3
        wait_recorded(state, 3)
        term(srv)
        record = record_of(state)
        assert record["clean"] is True and record["models"] == {}
    last = servers(repo, state)
    assert_untouched(last)
    assert active(last) == (3, 2)


def test_crash_limit_zero_turns_the_rule_off(servers: Start, tmp_path: Path) -> None:
    """With --crash-limit 0, two SIGKILLs soon after serving change nothing."""
    repo, state = _repo(tmp_path / "repo"), tmp_path / "state"
    for _ in range(2):
        srv = servers(repo, state, "--crash-limit", "0")
        wait_recorded(state, 3)
        kill9(srv)
    third = servers(repo, state, "--crash-limit", "0")
    assert_untouched(third)


def test_a_version_that_survived_the_window_is_not_counted(servers: Start,
                                                           tmp_path: Path) -> None:
    """A version marked as having served the (0.5 s) crash window before each of two
    SIGKILLs is not counted: the third start serves it, nothing is quarantined."""
    repo, state = _repo(tmp_path / "repo"), tmp_path / "state"
    for _ in range(2):
        srv = servers(repo, state, "--crash-window-s", "0.5")
        wait_recorded(state, 3, survived=True)
        kill9(srv)
        assert record_of(state)["crashes"] == {}
    third = servers(repo, state, "--crash-window-s", "0.5")
    assert_untouched(third)


# ---- what else a restart keeps or ends --------------------------------------------


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_probation_survives_a_restart(servers: Start, tmp_path: Path, stop: str) -> None:
    """A version activated (so on probation) before a stop is still on probation
    after the restart, with time left."""
    repo, state = _repo(tmp_path / "repo"), tmp_path / "state"
    args = ("--crash-limit", "0") if stop == "sigkill" else ()
    first = servers(repo, state, *args)
    control_stub(first.control_address).Activate(
        cpb.ActivateRequest(model="tiny", version="2"), timeout=30)
    before = ctl_json(first.control_address, "guard", "tiny")["state"]
    assert before["probation_version"] == "2" and int(before["probation_left_s"]) > 0
    if stop == "sigkill":
        kill9(first)
    else:
        term(first)
    again = servers(repo, state, *args)
    assert answering(again) == 2
    after = ctl_json(again.control_address, "guard", "tiny")["state"]
    assert after.get("probation_version") == "2", after
    assert int(after["probation_left_s"]) > 0


@pytest.mark.parametrize("kind", ["canary", "shadow"])
def test_a_candidate_running_at_a_stop_is_ended_at_start(servers: Start, tmp_path: Path,
                                                         kind: str) -> None:
    """A canary (or shadow) running at a SIGTERM stop is not restored: the start ends
    it with a "<kind>-abort" event by "startup", and `ctl status` shows a note."""
    repo, state = _repo(tmp_path / "repo"), tmp_path / "state"
    first = servers(repo, state)
    stub = control_stub(first.control_address)
    if kind == "canary":
        stub.Canary(cpb.CanaryRequest(model="tiny", version="1", weight_percent=10), timeout=30)
    else:
        stub.Shadow(cpb.ShadowRequest(model="tiny", version="1"), timeout=30)
    (running,) = ctl_json(first.control_address, "models")["models"]
    assert running[kind]["number"] == "1"
    term(first)
    again = servers(repo, state)
    assert answering(again) == 3
    (aborted,) = events(again, f"{kind}-abort")
    assert aborted["actor"] == "startup" and aborted["from_version"]["number"] == "1"
    (tiny,) = ctl_json(again.control_address, "status")["models"]
    assert int(tiny["canary"].get("number", 0)) == int(tiny["shadow"].get("number", 0)) == 0
    assert int(tiny["active"]["number"]) == 3
    assert kind in tiny["note"] and "restart" in tiny["note"], tiny
    text = ctl(again.control_address, "status")
    assert text.returncode == 0 and f"tiny: {tiny['note']}" in text.stdout, text.stdout


def test_kill9_with_a_client_calling_restarts_on_the_same_ports(servers: Start,
                                                                tmp_path: Path) -> None:
    """Killed with SIGKILL while clients are connected (one calling without pause, one
    idle between calls), the server starts again on the same fixed ports and serves
    them again, three times over."""
    repo, state = _repo(tmp_path / "repo"), tmp_path / "state"
    listen, control, metrics = (f"127.0.0.1:{free_port()}" for _ in range(3))
    ports = ("--listen", listen, "--control-listen", control, "--metrics-listen", metrics)
    caller = Caller(listen)
    # A connection of its own (grpc would share one between channels to the same
    # address), left open and idle at the kill, as an application's client is.
    held = client(listen, channel_args=[("grpc.use_local_subchannel_pool", 1)])
    try:
        for _ in range(3):
            srv = servers(repo, state, *ports)
            assert srv.address == listen and srv.control_address == control
            caller.wait_answer(caller.mark())  # the calls reach this process
            assert served_again(held) in {1, 2, 3}
            kill9(srv)
        last = servers(repo, state, *ports)
        assert caller.wait_answer(caller.mark()) == answering(last)
    finally:
        caller.stop()
        held.close()
    assert caller.wrong == 0


# ---- a version that kills the process on its first requests --------------------------


def test_a_kill_at_the_first_answers_after_a_restart_counts(tmp_path: Path) -> None:
    """A version killed (as by its own first requests) right after it answered its
    first request counts as a crash, also while another model is still loading:
    two such kills in a row roll it back at the third start."""
    repo, state = _repo(tmp_path / "repo"), tmp_path / "state"
    # A second model whose load takes a while (deterministic compute in its warm-up),
    # so tiny serves well before the start is over.
    make_models.write_model(make_models.slow_model(1, layers=256, width=1024), repo, "zslow", 1)
    started: list[ServerProcess] = []
    try:
        for _ in range(2):
            # not waiting for "serving": tiny answers while zslow still loads
            srv = ServerProcess(repo, state_dir=state, until="listening")
            started.append(srv)
            caller = Caller(srv.address)
            try:
                assert caller.wait_answer(0) == 3
                kill9(srv)
            finally:
                caller.stop()
            at_death = record_of(state)
            assert at_death["models"].get("tiny", {}).get("version") == 3, (
                f"tiny v3 answered, yet serving.json at the kill was {at_death}")
        third = ServerProcess(repo, state_dir=state)
        started.append(third)
        loops = events(third, "crash-loop")
        assert [e["from_version"]["number"] for e in loops] == ["3"]
        assert answering(third) == 2
        term(third)
    finally:
        for proc in started:
            if proc.proc.poll() is None:
                proc.proc.kill()
                proc.proc.wait()


def test_a_kill_right_after_an_activation_counts_against_the_new_version(
        servers: Start, tmp_path: Path) -> None:
    """Killed twice right after activating version 1 returned (as by its own first
    requests), the third start quarantines version 1 and serves the version it
    replaced, never blaming that one."""
    repo, state = _repo(tmp_path / "repo"), tmp_path / "state"
    first = servers(repo, state)
    wait_recorded(state, 3)
    control_stub(first.control_address).Activate(
        cpb.ActivateRequest(model="tiny", version="1"), timeout=30)
    kill9(first)
    second = servers(repo, state)
    assert active(second) == (1, 3)
    stub = control_stub(second.control_address)
    stub.Activate(cpb.ActivateRequest(model="tiny", version="3"), timeout=30)
    wait_recorded(state, 3)
    stub.Activate(cpb.ActivateRequest(model="tiny", version="1"), timeout=30)
    kill9(second)
    third = servers(repo, state)
    assert [e["from_version"]["number"] for e in events(third, "crash-loop")] == ["1"]
    assert list(quarantined(third)) == [1]
    assert answering(third) == 3


# ---- a version whose inference aborts the process ----------------------------------------

_ABORTING = """
import os
if os.environ.get("ABORT_MODEL_PATH"):
    # Test code injected into the server process only (the product is unchanged):
    # onnxruntime's run aborts the process, as a crashing operator would, when the
    # session's model file is the one named and an input holds 666. The compiled
    # session is wrapped, so that both InferenceSession.run and the sidecar's direct
    # call of the compiled run (sidecar/loader/onnx.py) meet it.
    import onnxruntime

    class _Aborting:
        def __init__(self, compiled):
            self._compiled = compiled

        def run(self, output_names, input_feed, run_options=None):
            if any((getattr(v, "size", 0) and (v == 666.0).any()) for v in input_feed.values()):
                os.abort()
            return self._compiled.run(output_names, input_feed, run_options)

        def __getattr__(self, name):
            return getattr(self._compiled, name)

    _init = onnxruntime.InferenceSession.__init__

    def init(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        if os.environ["ABORT_MODEL_PATH"] in str(getattr(self, "_model_path", "")):
            self._sess = _Aborting(self._sess)

    onnxruntime.InferenceSession.__init__ = init
"""


def test_a_version_that_aborts_the_process_is_rolled_back_after_two_crashes(
        servers: Start, tmp_path: Path) -> None:
    """Version 3's inference aborts the process (SIGABRT, a real crash of the server
    process on a request) twice in a row: the next start serves version 2 and shows
    3 quarantined for a crash, and requests that crashed 3 are answered by 2."""
    repo, state = _repo(tmp_path / "repo"), tmp_path / "state"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_ABORTING)
    env = {"ABORT_MODEL_PATH": str(repo / "tiny" / "3"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", ""))
                                         if p)}
    poison = np.full((1, 4), 666.0, np.float32)
    for _ in range(2):
        srv = servers(repo, state, env=env)
        assert answering(srv) == 3
        c = client(srv.address)
        with pytest.raises(InferenceServerException):
            c.infer("tiny", [infer_input("INPUT0", poison, "FP32")])
        c.close()
        assert srv.proc.wait(timeout=60) == -signal.SIGABRT
        srv.stop()
    third = servers(repo, state, env=env)
    assert answering(third) == 2 and active(third) == (2, 1)
    reasons = quarantined(third)
    assert list(reasons) == [3] and "crash" in reasons[3]
    c = client(third.address)
    try:
        answer = c.infer("tiny", [infer_input("INPUT0", poison, "FP32")])
    finally:
        c.close()
    assert answer.get_response().model_version == "2"
    term(third)
