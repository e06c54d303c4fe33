"""The machine: what it is, how busy it is, and the noise flags of every script.

Owns the readings of /proc: `describe` (CPU, software versions, load, the
sidecar revision measured; printed with every result), CPU seconds and RSS of
a process, `CpuMeter` (CPU used over a span by our processes and by every
other one: a noisy neighbour shows there), `wait_idle`, the flags that
control them (`add_noise_args`) and `run_parts`, the frame of every script.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from harness import ROOT

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def describe() -> dict[str, Any]:
    import onnxruntime as ort

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    return {"cpu_count": os.cpu_count(), "cpu_model": cpu,
            "python": platform.python_version(), "onnxruntime": ort.__version__,
            "grpcio": grpc.__version__, "numpy": np.__version__,
            "loadavg_at_start": os.getloadavg(), "sidecar_revision": sidecar_revision()}


def summary(info: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in info["loadavg_at_start"])
    return (f"machine: {info['cpu_count']} cores ({info['cpu_model']}); load average at"
            f" start {load}\npython {info['python']}, onnxruntime {info['onnxruntime']},"
            f" grpcio {info['grpcio']}, numpy {info['numpy']};"
            f" sidecar {info['sidecar_revision']} (git revision of this checkout)")


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
    # user nice system idle iowait irq softirq steal [guest guest_nice: inside user]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (all its threads) so far; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    """VmRSS of process `pid` now, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass(frozen=True, slots=True)
class CpuSpan:
    """CPU used during a span: `used` per watched pid, `busy` by the whole machine."""

    seconds: float
    used: dict[int, float]
    busy: float

    def of(self, *pids: int) -> float:
        return sum(self.used[p] for p in pids)

    @property
    def others_cores(self) -> float:
        """Mean cores every process but the watched ones used (and the kernel)."""
        return max(0.0, self.busy - sum(self.used.values())) / self.seconds


class CpuMeter:
    """Started now; `stop` returns the CpuSpan since (include your own pid)."""

    def __init__(self, pids: Sequence[int]) -> None:
        self._t0, self._busy0 = time.monotonic(), busy_seconds()
        self._cpu0 = {p: cpu_seconds(p) for p in pids}

    def stop(self) -> CpuSpan:
        used = {p: cpu_seconds(p) - c for p, c in self._cpu0.items()}
        return CpuSpan(max(1e-9, time.monotonic() - self._t0), used,
                       busy_seconds() - self._busy0)


def wait_idle(timeout_s: float, *, max_busy_cores: float = 0.25, sample_s: float = 1.0
              ) -> bool:
    """Wait until the machine stays nearly idle for `sample_s` (other people's work
    shares it); False if it did not within `timeout_s` (0: do not wait)."""
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


def add_noise_args(parser: argparse.ArgumentParser, *, max_others: float, wait_idle: float,
                   retries: int) -> None:
    """--max-others, --wait-idle and --retries, with this script's defaults."""
    parser.add_argument("--max-others", type=float, default=max_others, metavar="CORES",
                        help="a round in which other processes used more CPU cores than this"
                        f" counts as disturbed (default {max_others:g})")
    parser.add_argument("--wait-idle", type=float, default=wait_idle, metavar="S",
                        help="before each round, wait up to S s for an idle machine"
                        f" (default {wait_idle:g}; 0: do not wait)")
    parser.add_argument("--retries", type=int, default=retries,
                        help=f"disturbed rounds measured again, at most (default {retries})")


def run_parts(parts: dict[str, Callable[[argparse.Namespace], None]],
              args: argparse.Namespace) -> int:
    """Print the machine, run the parts chosen by --part (all by default), time them."""
    print(summary(describe()))
    started = time.monotonic()
    for name, part in parts.items():
        if not getattr(args, "part", None) or name in args.part:
            part(args)
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    return 0


def pin(pid: int, cpus: Sequence[int]) -> None:
    """Restrict every thread of a process (those it starts later inherit it) to
    these CPUs: to give a server and its clients separate cores."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), set(cpus))
        except (ProcessLookupError, PermissionError):
            pass  # a thread that just ended


def cpu_list(text: str) -> list[int]:
    """'0' or '0,1' -> [0] or [0, 1]."""
    return [int(part) for part in text.split(",") if part.strip()]
