"""The machine the benchmark runs on: what it is, and how busy the rest of it is.

This module owns the readings of the whole machine: the description printed
with every result (CPU, versions, load, revision of the sidecar measured), the
CPU time every process used (/proc/stat), from which a run learns how much CPU
processes other than its own server and clients took (a noisy neighbour), and
the optional wait for an idle machine before a run.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def describe() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "grpcio": grpc.__version__,
        "numpy": np.__version__,
        "loadavg_at_start": os.getloadavg(),
        "sidecar_revision": sidecar_revision(),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def sidecar_revision() -> str:
    """The commit the measured sidecar comes from, `+dirty` if sidecar/ has changes."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True, text=True,
                              check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "sidecar") else "")


def busy_seconds() -> float:
    """CPU seconds every CPU spent not idle since boot (all processes, the kernel)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: inside user]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def wait_until_idle(timeout_s: float, *, max_busy_cores: float = 0.2,
                    sample_s: float = 2.0) -> bool:
    """Wait until the machine stays nearly idle for `sample_s`; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        before = busy_seconds()
        time.sleep(sample_s)
        if (busy_seconds() - before) / sample_s <= max_busy_cores:
            return True
        if time.monotonic() >= deadline:
            return False
