"""Fixtures: model repositories made by examples/make_models.py, and real
sidecar servers run as subprocesses on 127.0.0.1:0.

The server runs in its own process because tritonclient's generated module and
the sidecar's both define the protobuf package `inference`; one process cannot
load both. Tests talk to it with tritonclient (and its generated stubs for
what tritonclient's API cannot send, such as typed contents).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import make_models
import pytest
from serverlog import ServerLog

STARTUP_TIMEOUT_S = 60.0


class ServerProcess:
    """A `sidecar serve` subprocess, its JSON log lines and its address."""

    def __init__(self, repo: Path, *args: str, env: dict[str, str] | None = None,
                 state_dir: Path | None = None, until: str = "serving") -> None:
        """Start it and wait for the log line `until` ("serving": ready to use;
        "listening": its ports are bound, models may still be loading)."""
        self.repo = repo
        #: a state directory made here is removed once the server stopped; one
        #: given is the test's (it may start another server on it)
        self._own_state = state_dir is None
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="sidecar-state-"))
        cmd = [
            sys.executable, "-m", "sidecar", "serve",
            "--model-repository", str(repo),
            "--listen", "127.0.0.1:0",
            "--control-listen", "127.0.0.1:0",
            "--metrics-listen", "127.0.0.1:0",
            "--state-dir", str(self.state_dir),
            "--log-format", "json",
            *args,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        self._log = ServerLog(self.proc.stdout, self._stderr)
        self.log: list[dict[str, Any]] = self._log.records
        try:
            serving = self.wait_for(until)
        except BaseException:  # never leave a process, its pipes or its state behind
            self.proc.kill()
            self.proc.wait()
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
            self._remove_state()
            raise
        self.address: str = serving["address"]
        self.control_address: str = serving["control_address"]
        self.metrics_address: str = serving.get("metrics_address", "")

    def _stderr(self) -> str:
        exited = self.proc.poll() is not None
        return self.proc.stderr.read() if exited and self.proc.stderr else ""

    def wait_for(self, event: str, timeout: float = STARTUP_TIMEOUT_S, **fields: Any
                 ) -> dict[str, Any]:
        """Block until a log line with this event (and fields) arrives."""
        return self._log.wait_for(event, timeout, **fields)

    def channel(self, **options: int) -> grpc.Channel:
        return grpc.insecure_channel(self.address, options=list(options.items()))

    def control_channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.control_address)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream:
                    stream.close()
            if self.proc.poll() is not None:
                self._remove_state()

    def _remove_state(self) -> None:
        if self._own_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)


def write_standard_repo(repo: Path) -> Path:
    """tiny v1+v2, text v1, dtypes v1, int8 v1, trio v1-3: what most tests serve.

    With two warm versions, tiny serves 2 with 1 as previous, and trio's version 1
    stays on disk, unloaded.
    """
    make_models.build_examples(repo)
    for version in (1, 2, 3):
        make_models.write_model(make_models.tiny_model(version), repo, "trio", version)
    make_models.write_model(make_models.dtypes_model(), repo, "dtypes", 1)
    make_models.write_model(make_models.identity_model("INT8"), repo, "int8", 1)
    return repo


@pytest.fixture(scope="session")
def standard_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_standard_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="session")
def server(standard_repo: Path) -> Iterator[ServerProcess]:
    """One shared server over the standard repository; tests must not change it."""
    proc = ServerProcess(standard_repo)
    yield proc
    assert proc.stop() == 0


@pytest.fixture
def start_server() -> Iterator[Any]:
    """Start a server of the test's own; it is stopped (and must exit 0) after."""
    started: list[ServerProcess] = []

    def start(repo: Path, *args: str, env: dict[str, str] | None = None,
              state_dir: Path | None = None) -> ServerProcess:
        proc = ServerProcess(repo, *args, env=env, state_dir=state_dir)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        assert proc.stop() == 0, proc.proc.stderr


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[Any]:
    """A fresh single-node etcd of the test's own (tests/etcd_server.py), stopped
    after. A test that needs etcd fails, never skips, when none can be started."""
    from etcd_server import EtcdServer, EtcdServerError  # only the etcd tests need it

    try:
        server = EtcdServer(tmp_path / "etcd")
    except EtcdServerError as err:
        pytest.fail(f"cannot start etcd: {err}", pytrace=False)
    yield server
    server.stop()
