"""Servers under test as subprocesses: start, wait until ready, sample, stop.

This module owns the server side of a measured run: the command lines of the
sidecar and of the minimal baseline, the wait for their readiness line (with
a timeout, never a fixed sleep), the CPU and memory readings taken from
/proc/<pid>, and the stop (SIGTERM, then SIGKILL if it hangs).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

BENCH = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: Reads one stdout line; returns the address once the line says "ready".
ReadyParser = Callable[[str], str | None]


def sidecar_command(repository: Path, state_dir: Path, extra: Sequence[str]) -> list[str]:
    """`sidecar serve` as users run it (the console script) with every feature at
    its default, kept to the run's temp directory: its own state directory (no
    state restored from an earlier run, nothing written into the working tree)
    and free control and metrics ports (the defaults 8002 and 8003 may be taken;
    metrics stay on). `extra` comes last, so it overrides these."""
    return [
        str(VENV_BIN / "sidecar"), "serve",
        "--model-repository", str(repository),
        "--listen", "127.0.0.1:0",
        "--control-listen", "127.0.0.1:0",
        "--metrics-listen", "127.0.0.1:0",
        "--state-dir", str(state_dir),
        "--log-format", "json",
        *extra,
    ]


def minimal_command(model: Path, extra: Sequence[str]) -> list[str]:
    return [
        sys.executable, str(BENCH / "minimal_server.py"),
        "--model", str(model), "--listen", "127.0.0.1:0", "--max-message-mb", "256",
        *extra,
    ]


def sidecar_ready(line: str) -> str | None:
    """The address from the sidecar's JSON `serving` line (models loaded)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("event") != "serving":
        return None
    if record.get("ready") is False:
        raise RuntimeError(f"sidecar is serving but not ready: {line.strip()}")
    return str(record["address"])


def minimal_ready(line: str) -> str | None:
    """The address from the baseline's `listening HOST:PORT` line."""
    head, _, address = line.strip().partition(" ")
    return address if head == "listening" and address else None


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of process `pid` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


@dataclass
class Server:
    """A running server subprocess and the address it listens on."""

    name: str
    proc: subprocess.Popen[str]
    address: str
    stderr: IO[str]
    lines: deque[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        """VmRSS now, in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def start(name: str, command: list[str], parse: ReadyParser, *, cwd: Path,
          timeout: float = START_TIMEOUT_S) -> Server:
    """Start a server in `cwd` (a temp directory: whatever it writes by a relative
    path stays out of the working tree); return once it printed its ready line."""
    stderr = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=cwd)
    assert proc.stdout is not None
    lines: deque[str] = deque(maxlen=50)
    ready: queue.Queue[str | BaseException] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, parse, lines, ready), daemon=True).start()
    try:
        outcome = ready.get(timeout=timeout)
    except queue.Empty:
        outcome = TimeoutError(f"{name} not ready within {timeout:.0f} s")
    server = Server(name, proc, "", stderr, lines)
    if isinstance(outcome, BaseException):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        tail = _tail(server)
        server.stop()
        raise RuntimeError(f"{name} failed to start: {outcome}\n{tail}") from outcome
    server.address = outcome
    return server


def _pump(stream: IO[str], parse: ReadyParser, lines: deque[str],
          ready: queue.Queue[str | BaseException]) -> None:
    """Read stdout to its end (so the pipe never fills); report the ready line."""
    reported = False
    for line in stream:
        lines.append(line)
        if reported:
            continue
        try:
            address = parse(line)
        except Exception as exc:
            ready.put(exc)
            reported = True
            continue
        if address:
            ready.put(address)
            reported = True
    if not reported:
        ready.put(RuntimeError("exited before it was ready"))


def _tail(server: Server) -> str:
    server.stderr.seek(0)
    err = server.stderr.read()[-2000:]
    out = "".join(server.lines)[-2000:]
    return f"--- stdout (tail)\n{out}--- stderr (tail)\n{err}"
