"""The servers under test as subprocesses, and what they serve.

Owns the server side of every benchmark:

- `Server`: a subprocess started in a fresh temporary directory (whatever it
  writes by a relative path stays there; removed at stop), ready once it logged
  its JSON `serving` line (read by tests/serverlog.py, the one reader of the
  server's log; with a timeout, never a fixed sleep), its RSS and CPU from
  /proc, and its stop (SIGTERM, SIGKILL if it hangs; SIGTERM as well if the
  benchmark dies, so no server outlives it);
- `Sidecar`: `sidecar serve` as users run it (the console script) with every
  feature at its default, on free ports (inference, control, metrics) with its
  own --state-dir, and its control plane (ModelControl calls);
  `minimal`: bench/minimal_server.py, the baseline;
- `EventFollower`: WatchEvents followed in a thread, each event stamped with
  the monotonic time it arrived;
- `tiny_repo`, `write_version`, `scratch`: repositories in temporary directories.

The processes that import this module use the sidecar's control stubs only
(sidecar.control.v1); the inference stubs are tritonclient's, in the client
workers (the two `inference` packages cannot be loaded in one process).
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from serverlog import ServerLog, ServerLogError

from harness import machine, models
from sidecar.rpc.proto import control_pb2 as pb
from sidecar.rpc.proto import control_pb2_grpc

BENCH = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "sidecar"  # the console script, as users run it
SIDECAR = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "sidecar"]
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


class Server:
    """A server subprocess and the addresses from its `serving` line."""

    def __init__(self, name: str, command: Sequence[str], timeout: float = START_TIMEOUT_S
                 ) -> None:
        self.name = name
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self._stderr = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(list(command), stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, cwd=self.workdir,
                                     preexec_fn=_die_with_parent)
        assert self.proc.stdout is not None
        self.log = ServerLog(self.proc.stdout, self.stderr_tail)
        try:
            serving = self.log.wait_for("serving", timeout)
            if serving.get("ready") is False:
                raise ServerLogError(f"{name} is serving but not ready: {serving}")
        except BaseException:
            self.stop()
            raise
        self.address: str = serving["address"]
        self.control_address: str = serving.get("control_address", "")

    def stderr_tail(self, chars: int = 2000) -> str:
        if self._stderr.closed:
            return ""
        self._stderr.seek(0)
        return f"--- {self.name} stderr (tail)\n{self._stderr.read()[-chars:]}"

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def rss_mb(self) -> float:
        return machine.rss_mb(self.pid)

    def stop(self) -> int:
        """SIGTERM (SIGKILL after STOP_TIMEOUT_S); returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return int(self.proc.returncode)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the benchmark dies (no orphan servers)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def minimal(model_file: Path, extra: Sequence[str] = ()) -> Server:
    return Server("minimal", [sys.executable, str(BENCH / "minimal_server.py"),
                              "--model", str(model_file), "--listen", "127.0.0.1:0",
                              "--max-message-mb", "256", *extra])


class Sidecar(Server):
    """`sidecar serve` on a repository; `args` come last, so they override the bench's.
    `name` labels its temporary directory and its stderr in errors."""

    def __init__(self, repo: Path, *args: str, name: str = "sidecar") -> None:
        self.repo = repo
        self._channel: grpc.Channel | None = None
        super().__init__(name, [
            *SIDECAR, "serve", "--model-repository", str(repo),
            "--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0",
            "--metrics-listen", "127.0.0.1:0", "--state-dir", "state",
            "--log-format", "json", *args])

    def control(self) -> Any:
        """A ModelControl stub on the control port (one channel, reused)."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.control_address)
        return control_pb2_grpc.ModelControlStub(self._channel)

    def activate(self, model: str, version: int | str, *, force: bool = False) -> Any:
        """Activate; returns the SwapResponse."""
        return self.control().Activate(pb.ActivateRequest(
            model=model, version=str(version), force=force, actor="bench"), timeout=120)

    def rollback(self, model: str) -> Any:
        return self.control().Rollback(pb.RollbackRequest(model=model, actor="bench"),
                                       timeout=60)

    def model(self, name: str) -> Any:
        """The model's ListModels entry (active, previous, loaded_versions, ...)."""
        found = [m for m in self.control().ListModels(pb.ListModelsRequest(), timeout=30).models
                 if m.name == name]
        if not found:
            raise RuntimeError(f"no model {name!r} on the server")
        return found[0]

    def stop(self) -> int:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        return super().stop()


@dataclass(frozen=True, slots=True)
class Arrived:
    at: float  # time.monotonic() when the event arrived
    event: Any


class EventFollower:
    """Follows WatchEvents in a thread; `wait` finds events that arrived after a mark."""

    def __init__(self, server: Sidecar) -> None:
        self.events: list[Arrived] = []
        self._cond = threading.Condition()
        self._channel = grpc.insecure_channel(server.control_address)
        stub = control_pb2_grpc.ModelControlStub(self._channel)
        last = stub.ListEvents(pb.ListEventsRequest(limit=1000), timeout=30).last_seq
        self._call = stub.WatchEvents(pb.WatchEventsRequest(after_seq=last))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for event in self._call:
                with self._cond:
                    self.events.append(Arrived(time.monotonic(), event))
                    self._cond.notify_all()
        except grpc.RpcError:
            pass  # cancelled by close(), or the server stopped

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def wait(self, predicate: Callable[[Any], bool], *, after: int = 0,
             timeout: float = 30.0) -> Arrived | None:
        """The first event from index `after` on that satisfies `predicate`; None on timeout."""
        def found() -> Arrived | None:
            return next((a for a in self.events[after:] if predicate(a.event)), None)

        with self._cond:
            return self._cond.wait_for(found, timeout)

    def close(self) -> None:
        self._call.cancel()
        self._channel.close()


def write_version(repo: Path, name: str, version: int, model: Any) -> Path:
    """Write `model` as <repo>/<name>/<version>/model.onnx; returns the file."""
    path: Path = models.write_model(model, repo, name, version)
    return path


def tiny_repo(root: Path, versions: Sequence[int] = (1, 2)) -> Path:
    """<root>/repo holding only `tiny` at these versions (tiny_model(v) each)."""
    for v in versions:
        write_version(root / "repo", "tiny", v, models.tiny_model(v))
    return root / "repo"


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary directory, removed afterwards (models are never written elsewhere)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
