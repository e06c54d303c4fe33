"""Shared helpers of the lifecycle benchmarks: bench/swap.py, bench/watch.py, bench/guard.py.

This module owns what those three scripts have in common and nothing the
data-plane benchmark (bench/run.py and its modules) owns:

- `Sidecar`: a `sidecar serve` subprocess on 127.0.0.1:0 (inference, control and
  metrics ports all free ones, its own state directory), its JSON log lines, its
  RSS and CPU time from /proc, and its control stub;
- `EventFollower`: the control service's WatchEvents followed in a thread, each
  event stamped with the monotonic time it arrived;
- `ClientPool`: client worker processes that send ModelInfer calls (closed loop
  with N calls in flight, or open loop at a fixed rate) and record, per call, when
  it started and ended and which version answered (or that it failed), so the
  scripts can cut windows and find "the first answer from version V" afterwards;
- small statistics and table printing, the machine description, CPU readings.

Processes: the scripts import the sidecar's control stubs (package
sidecar.control.v1) and never its inference stubs; the workers use
tritonclient's generated inference stubs (the two inference modules cannot be
loaded in one process). All times are `time.monotonic()` (CLOCK_MONOTONIC, one
clock for every process of the machine) unless named wall.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import multiprocessing as mp
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PYTHON = sys.executable
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: Status of a call in `Samples.version`: > 0 the version that answered; these otherwise.
FAILED = 0  # the call failed (see Samples.errors)
WRONG = -1  # answered, but the output differs from that version's expected values

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


# ---- models and repositories -----------------------------------------------------------


def make_models() -> ModuleType:
    """examples/make_models.py, the project's one source of generated models."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module("make_models")


def write_version(repo: Path, name: str, version: int, model: Any) -> Path:
    """Write `model` as <repo>/<name>/<version>/model.onnx; returns the file."""
    path: Path = make_models().write_model(model, repo, name, version)
    return path


def tiny_repo(root: Path, versions: Sequence[int] = (1, 2)) -> Path:
    """A repository holding only `tiny` at these versions (tiny_model(v) each)."""
    mm = make_models()
    repo = root / "repo"
    for v in versions:
        write_version(repo, "tiny", v, mm.tiny_model(v))
    return repo


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary directory, removed afterwards (models are never written elsewhere)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---- the machine -------------------------------------------------------------------------


def describe_machine() -> str:
    """One paragraph naming the machine and the software measured."""
    import onnxruntime as ort

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {os.cpu_count()} cores ({cpu}); load average at start {load}\n"
            f"python {platform.python_version()}, onnxruntime {ort.__version__}, grpcio"
            f" {grpc.__version__}, numpy {np.__version__}; sidecar {sidecar_revision()}")


def sidecar_revision() -> str:
    """The commit measured, `+dirty` if sidecar/ has uncommitted changes."""
    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True,
                              text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "sidecar") else "")


def busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (all its threads) so far; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_idle(timeout_s: float, *, max_busy_cores: float = 0.25, sample_s: float = 1.0
              ) -> bool:
    """Wait until the whole machine stays nearly idle for `sample_s` (other people's
    benchmarks share it); False if it did not within `timeout_s` (0: do not wait)."""
    deadline = time.monotonic() + timeout_s
    while timeout_s > 0:
        before = busy_seconds()
        time.sleep(sample_s)
        if (busy_seconds() - before) / sample_s <= max_busy_cores:
            return True
        if time.monotonic() >= deadline:
            print(f"  (the machine stayed busy for {timeout_s:g} s; measuring anyway)")
            return False
    return True


class CpuMeter:
    """CPU used during a span: by our processes (`pids`) and by everything else."""

    def __init__(self, pids: Sequence[int]) -> None:
        self._pids = list(pids)
        self._t0 = time.monotonic()
        self._busy0 = busy_seconds()
        self._ours0 = sum(cpu_seconds(p) for p in self._pids)

    def stop(self) -> tuple[float, float]:
        """(cores used by our processes, cores used by all other processes)."""
        span = max(1e-9, time.monotonic() - self._t0)
        ours = sum(cpu_seconds(p) for p in self._pids) - self._ours0
        busy = busy_seconds() - self._busy0
        return ours / span, max(0.0, busy - ours) / span


# ---- the server ---------------------------------------------------------------------------


class Sidecar:
    """A `sidecar serve` subprocess (`python -m sidecar serve`, as the tests run it)."""

    def __init__(self, repo: Path, *args: str, state_dir: Path | None = None,
                 timeout: float = START_TIMEOUT_S) -> None:
        self.repo = repo
        self._own_state = state_dir is None
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="lifecycle-bench-state-"))
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.log: list[dict[str, Any]] = []
        self._stderr = tempfile.TemporaryFile("w+")
        cmd = [PYTHON, "-m", "sidecar", "serve",
               "--model-repository", str(repo),
               "--listen", "127.0.0.1:0",
               "--control-listen", "127.0.0.1:0",
               "--metrics-listen", "127.0.0.1:0",
               "--state-dir", str(self.state_dir),
               "--log-format", "json",
               *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, cwd=self.state_dir,
                                     preexec_fn=_die_with_parent)
        threading.Thread(target=self._read, daemon=True).start()
        self._channel: grpc.Channel | None = None
        try:
            serving = self.wait_for("serving", timeout)
        except BaseException:
            self.stop()
            raise
        self.address: str = serving["address"]
        self.control_address: str = serving["control_address"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = {"event": "non-json", "line": line}
            if isinstance(record, dict):
                self.log.append(record)
                self.lines.put(record)
        self.lines.put({"event": "<exit>"})

    def wait_for(self, event: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """The next log line with this event (and these fields); raises on timeout/exit."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                record = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"sidecar: no '{event}' line within {timeout:.0f} s"
                                   f"\n{self.stderr_tail()}") from None
            if record.get("event") == "<exit>":
                raise RuntimeError(f"sidecar exited before '{event}'\n{self.stderr_tail()}")
            if record.get("event") == event and all(
                    record.get(k) == v for k, v in fields.items()):
                return record

    def stderr_tail(self, chars: int = 2000) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-chars:]

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def rss_mb(self) -> float:
        """VmRSS of the server process now, in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def control(self) -> Any:
        """A ModelControl stub on the control port (one channel, reused)."""
        from sidecar.rpc.proto import control_pb2_grpc

        if self._channel is None:
            self._channel = grpc.insecure_channel(self.control_address)
        return control_pb2_grpc.ModelControlStub(self._channel)

    def stop(self) -> int:
        """SIGTERM (SIGKILL after STOP_TIMEOUT_S); returns the exit status."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        if self._own_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return int(self.proc.returncode)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if this benchmark dies (no orphan servers)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


# ---- control plane --------------------------------------------------------------------------


def pb() -> ModuleType:
    """sidecar.control.v1's messages (safe beside tritonclient)."""
    from sidecar.rpc.proto import control_pb2

    return control_pb2


def activate(server: Sidecar, model: str, version: int | str, *, force: bool = False) -> Any:
    """Activate; returns the SwapResponse."""
    return server.control().Activate(pb().ActivateRequest(
        model=model, version=str(version), force=force, actor="bench"), timeout=120)


def rollback(server: Sidecar, model: str) -> Any:
    return server.control().Rollback(pb().RollbackRequest(model=model, actor="bench"),
                                     timeout=60)


def active_version(server: Sidecar, model: str) -> int:
    for info in server.control().ListModels(pb().ListModelsRequest(), timeout=30).models:
        if info.name == model:
            return int(info.active.number)
    raise RuntimeError(f"no model {model!r} on the server")


def loaded_versions(server: Sidecar, model: str) -> list[int]:
    for info in server.control().ListModels(pb().ListModelsRequest(), timeout=30).models:
        if info.name == model:
            return sorted(int(v) for v in info.loaded_versions)
    return []


@dataclass(frozen=True, slots=True)
class Arrived:
    """An event of the event log, and the monotonic time this process received it."""

    at: float
    event: Any


class EventFollower:
    """Follows WatchEvents in a thread; `wait` finds events that arrived after a mark."""

    def __init__(self, server: Sidecar) -> None:
        from sidecar.rpc.proto import control_pb2_grpc

        self.events: list[Arrived] = []
        self._cond = threading.Condition()
        self._channel = grpc.insecure_channel(server.control_address)
        stub = control_pb2_grpc.ModelControlStub(self._channel)
        last = stub.ListEvents(pb().ListEventsRequest(limit=1000), timeout=30).last_seq
        self._call = stub.WatchEvents(pb().WatchEventsRequest(after_seq=last))
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


# ---- statistics and tables -------------------------------------------------------------------


def pct(values: Sequence[float] | F64, q: float) -> float:
    """The q-th percentile (linear interpolation); NaN for no values."""
    data = np.asarray(values, dtype=np.float64)
    return float(np.percentile(data, q)) if data.size else float("nan")


def median(values: Sequence[float]) -> float:
    return pct(values, 50)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def fmt(value: float | int | str, digits: int = 2) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table (pasted as is into docs/performance-lifecycle.md)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    print(f"\n{title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    sys.stdout.flush()


# ---- client workers --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """What each call sends: `rows` rows of FP32 [rows, 4] for a tiny-signature model."""

    model: str = "tiny"
    version: str = ""  # the version the calls name ("": the active one)
    rows: int = 1
    random: bool = False  # random normal inputs (a pool of `pool`); else all ones
    shift: float = 0.0  # added to the random inputs
    pool: int = 1024
    seed: int = 0
    check: bool = True  # compare outputs with tiny_weights(version) (not for random)


@dataclass(frozen=True, slots=True)
class Plan:
    """One run of the workers, on the monotonic clock."""

    begin: float  # first call (after a connection call that is not recorded)
    end: float  # no call starts after this (or after the pool's stop event)
    in_flight: int = 1  # closed loop: calls in flight per process
    rate: float = 0.0  # > 0: open loop, calls/s per process (in_flight ignored)


@dataclass(slots=True)
class Samples:
    """Every call of a run: start and end times, and who answered (see FAILED, WRONG)."""

    started: F64
    done: F64
    version: I64
    errors: dict[str, int] = field(default_factory=dict)  # gRPC code -> count
    first_error: str = ""

    @staticmethod
    def merge(parts: Sequence[Samples]) -> Samples:
        """One run's samples from every worker, ordered by end time."""
        errors: dict[str, int] = {}
        for part in parts:
            for code, n in part.errors.items():
                errors[code] = errors.get(code, 0) + n
        done = np.concatenate([_f64(), *(p.done for p in parts)])
        order = np.argsort(done, kind="stable")
        started = np.concatenate([_f64(), *(p.started for p in parts)])
        version = np.concatenate([_i64(), *(p.version for p in parts)])
        return Samples(started[order], done[order], version[order], errors,
                       next((p.first_error for p in parts if p.first_error), ""))

    def between(self, t0: float, t1: float) -> Samples:
        """The calls that ended in [t0, t1)."""
        keep = (self.done >= t0) & (self.done < t1)
        return Samples(self.started[keep], self.done[keep], self.version[keep],
                       self.errors, self.first_error)

    @property
    def count(self) -> int:
        return int(self.done.size)

    @property
    def failed(self) -> int:
        return int(np.count_nonzero(self.version == FAILED))

    @property
    def wrong(self) -> int:
        return int(np.count_nonzero(self.version == WRONG))

    def latencies_ms(self) -> F64:
        """Latency of the calls that succeeded, in ms."""
        ok = self.version > 0
        return np.asarray((self.done[ok] - self.started[ok]) * 1e3, dtype=np.float64)

    def by_version(self) -> dict[int, int]:
        values, counts = np.unique(self.version, return_counts=True)
        return {int(v): int(n) for v, n in zip(values, counts, strict=True)}


def _f64() -> F64:
    return np.zeros(0, dtype=np.float64)


def _i64() -> I64:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class LoadFigures:
    """Client-side figures of a window."""

    seconds: float
    calls: int
    errors: int
    wrong: int
    rps: float
    p50_ms: float
    p99_ms: float

    @staticmethod
    def of(samples: Samples, t0: float, t1: float) -> LoadFigures:
        window = samples.between(t0, t1)
        lat = window.latencies_ms()
        span = t1 - t0
        return LoadFigures(span, window.count, window.failed, window.wrong,
                           int(lat.size) / span, pct(lat, 50), pct(lat, 99))


class ClientPool:
    """Worker processes (spawned once, reused run after run) sending `spec`'s calls."""

    def __init__(self, spec: RequestSpec, processes: int = 1) -> None:
        ctx = mp.get_context("spawn")
        self.stop_event = ctx.Event()
        self._procs: list[Any] = []
        self._conns: list[Connection] = []
        for k in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, daemon=True,
                               args=(child, spec, spec.seed * 1000 + k, self.stop_event))
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)
        for conn in self._conns:
            reply = _recv(conn, 120.0)
            if reply != "ready":
                raise RuntimeError(f"client worker failed to start:\n{reply}")

    @property
    def pids(self) -> list[int]:
        return [int(p.pid) for p in self._procs]

    def start(self, address: str, plan: Plan) -> None:
        """Hand every worker the run; `collect` waits for its end."""
        self.stop_event.clear()
        for conn in self._conns:
            conn.send((address, plan))

    def collect(self, timeout: float = 120.0) -> Samples:
        parts = []
        for conn in self._conns:
            reply = _recv(conn, timeout)
            if isinstance(reply, str):
                raise RuntimeError(f"client worker failed:\n{reply}")
            parts.append(_unpack(reply))
        return Samples.merge(parts)

    def run(self, address: str, plan: Plan) -> Samples:
        self.start(address, plan)
        return self.collect(timeout=max(0.0, plan.end - time.monotonic()) + 120.0)

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()


def _recv(conn: Connection, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError(f"client worker silent for {timeout:.0f} s")
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError("client worker died") from None


def _unpack(reply: tuple[bytes, bytes, bytes, dict[str, int], str]) -> Samples:
    started, done, version = array("d"), array("d"), array("q")
    started.frombytes(reply[0])
    done.frombytes(reply[1])
    version.frombytes(reply[2])
    return Samples(np.array(started, dtype=np.float64), np.array(done, dtype=np.float64),
                   np.array(version, dtype=np.int64), dict(reply[3]), reply[4])


# ---- inside a worker process -----------------------------------------------------------------


class _Recorder:
    """Per-call records of one run, checked against each version's expected output."""

    def __init__(self, spec: RequestSpec, inputs: list[npt.NDArray[np.float32]]) -> None:
        self.started, self.done, self.version = array("d"), array("d"), array("q")
        self.errors: dict[str, int] = {}
        self.first_error = ""
        self._spec = spec
        self._inputs = inputs
        self._seen: dict[int, bytes] = {}  # version -> its first (verified) output bytes

    def ok(self, started: float, index: int, response: Any) -> None:
        done = time.monotonic()
        try:
            version = int(response.model_version)
        except ValueError:
            version = WRONG
        if self._spec.check and version > 0 and not self._right(version, index, response):
            version = WRONG
        self._add(started, done, version)

    def _right(self, version: int, index: int, response: Any) -> bool:
        raw = bytes(response.raw_output_contents[0])
        known = self._seen.get(version)
        if known is not None:
            return raw == known
        w, b = make_models().tiny_weights(version)
        want = self._inputs[index] @ w + b
        got = np.frombuffer(raw, dtype=np.float32).reshape(want.shape)
        if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            return False
        self._seen[version] = raw
        return True

    def failed(self, started: float, code: str, message: str) -> None:
        self._add(started, time.monotonic(), FAILED)
        self.errors[code] = self.errors.get(code, 0) + 1
        self.first_error = self.first_error or f"{code}: {message}"

    def _add(self, started: float, done: float, version: int) -> None:
        self.started.append(started)
        self.done.append(done)
        self.version.append(version)

    def packed(self) -> tuple[bytes, bytes, bytes, dict[str, int], str]:
        return (self.started.tobytes(), self.done.tobytes(), self.version.tobytes(),
                self.errors, self.first_error)


def _inputs(spec: RequestSpec, seed: int) -> list[npt.NDArray[np.float32]]:
    if not spec.random:
        return [np.ones((spec.rows, 4), dtype=np.float32)]
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((spec.rows, 4), dtype=np.float32) + np.float32(spec.shift)
            for _ in range(spec.pool)]


def _requests(spec: RequestSpec, inputs: list[npt.NDArray[np.float32]]) -> list[Any]:
    from tritonclient.grpc import service_pb2 as ipb

    out = []
    for x in inputs:
        request = ipb.ModelInferRequest(model_name=spec.model, model_version=spec.version)
        request.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
        request.raw_input_contents.append(x.tobytes())
        out.append(request)
    return out


def _worker_main(conn: Connection, spec: RequestSpec, seed: int, stop: Any) -> None:
    """Entry point of a worker: build the requests, then run plan after plan."""
    try:
        inputs = _inputs(spec, seed)
        requests = _requests(spec, inputs)
        make_models()  # imported before any measured call
        conn.send("ready")
        while (job := conn.recv()) is not None:
            address, plan = job
            recorder = _Recorder(spec, inputs)
            asyncio.run(_run(address, plan, requests, recorder, stop))
            conn.send(recorder.packed())
    except Exception:
        conn.send(traceback.format_exc())
    finally:
        conn.close()


async def _run(address: str, plan: Plan, requests: list[Any], recorder: _Recorder,
               stop: Any) -> None:
    from tritonclient.grpc import service_pb2_grpc as ipb_grpc

    big = 2**31 - 1
    options = [("grpc.max_receive_message_length", big), ("grpc.max_send_message_length", big)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        try:
            await call(requests[0], timeout=CALL_TIMEOUT_S)  # connect; not recorded
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(max(0.0, plan.begin - time.monotonic()))
        state = _LoopState(plan, stop)

        async def one(index: int) -> None:
            started = time.monotonic()
            try:
                response = await call(requests[index], timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                recorder.failed(started, exc.code().name, exc.details() or "")
                return
            recorder.ok(started, index, response)

        if plan.rate > 0:
            await _open_loop(one, len(requests), plan, state)
        else:
            await asyncio.gather(*(_closed_loop(one, len(requests), k, plan.in_flight, state)
                                   for k in range(plan.in_flight)))


class _LoopState:
    """When to stop: the plan's end, or the pool's stop event (checked every 5 ms)."""

    def __init__(self, plan: Plan, stop: Any) -> None:
        self._end = plan.end
        self._stop = stop
        self._checked = 0.0
        self._stopped = False

    def running(self) -> bool:
        now = time.monotonic()
        if now >= self._end or self._stopped:
            return False
        if now - self._checked > 0.005:
            self._checked = now
            self._stopped = bool(self._stop.is_set())
        return not self._stopped


async def _closed_loop(one: Callable[[int], Any], n: int, k: int, stride: int,
                       state: _LoopState) -> None:
    """Loop k of `stride` sends inputs k, k + stride, ...: together the loops walk the
    pool in order, so any stretch of calls sees the pool's mix of inputs."""
    i = k
    while state.running():
        await one(i % n)
        i += stride


async def _open_loop(one: Callable[[int], Any], n: int, plan: Plan, state: _LoopState) -> None:
    """Calls started on a fixed schedule, whether or not earlier ones returned."""
    interval = 1.0 / plan.rate
    pending: set[asyncio.Task[None]] = set()
    i = 0
    due = plan.begin
    while state.running():
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
            continue
        task = asyncio.create_task(one(i % n))
        pending.add(task)
        task.add_done_callback(pending.discard)
        i += 1
        due += interval
    if pending:
        await asyncio.gather(*pending)
