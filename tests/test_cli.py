"""The `sidecar` command: help, settings from flags and environment, clear errors."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from helpers import client

from sidecar.settings import Settings, env_name, flag_name

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # In a temporary directory: a start that fails must leave nothing behind anyway,
    # and the default state dir is relative to the working directory.
    with tempfile.TemporaryDirectory() as cwd:
        result = subprocess.run(
            [sys.executable, "-m", "sidecar", *args], capture_output=True, text=True,
            timeout=60, env={**os.environ, **(env or {})}, cwd=cwd,
        )
        assert not (Path(cwd) / ".sidecar-state").exists(), "a failed start left state behind"
    return result


def test_help_describes_every_setting() -> None:
    """`sidecar serve --help` lists every setting's flag and environment variable."""
    out = _run("serve", "--help").stdout
    for f in dataclasses.fields(Settings):
        assert flag_name(f.name) in out, f.name
        assert env_name(f.name) in out, f.name
    assert "serve" in _run("--help").stdout


def test_readme_settings_table_matches_the_code() -> None:
    """README.md's settings table is exactly what scripts/settings_table.py writes
    from the Settings fields (every flag, variable, default and help)."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "settings_table.py"),
                             "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    readme = (ROOT / "README.md").read_text()
    assert all(flag_name(f.name) in readme for f in dataclasses.fields(Settings))


def test_missing_repository_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A repository that does not exist: one clear line on stderr, exit code 2."""
    result = _run("serve", "--model-repository", str(tmp_path / "nope"),
                  "--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"sidecar: error: model repository {tmp_path / 'nope'} does not exist"]


def test_bad_flag_exits_2() -> None:
    """An unknown flag is a usage error (exit 2) naming the flag."""
    result = _run("serve", "--no-such-flag")
    assert result.returncode == 2 and "--no-such-flag" in result.stderr


def test_bad_environment_value_exits_2(tmp_path: Path) -> None:
    """A SIDECAR_* variable that does not parse: exit 2 naming the variable."""
    result = _run("serve", "--model-repository", str(tmp_path),
                  env={"SIDECAR_MAX_MESSAGE_MB": "lots"})
    assert result.returncode == 2 and "SIDECAR_MAX_MESSAGE_MB" in result.stderr


def test_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """A port another process listens on: one clear line, exit code 1."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = _run("serve", "--model-repository", str(tmp_path),
                      "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"sidecar: error: cannot listen on 127.0.0.1:{port}: Address already in use"
        " (set --listen to move it)")


def test_address_not_on_this_host_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """An address no interface has: one clear line with the OS's reason, exit code 1."""
    result = _run("serve", "--model-repository", str(tmp_path), "--listen", "192.0.2.1:8001")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "sidecar: error: cannot listen on 192.0.2.1:8001: Cannot assign requested address"
        " (set --listen to move it)")


def test_settings_come_from_the_environment(start_server, standard_repo) -> None:  # type: ignore[no-untyped-def]
    """SIDECAR_* variables set what flags would (here: the message size limit)."""
    import numpy as np
    from helpers import infer_input, status_of

    srv = start_server(standard_repo, env={"SIDECAR_MAX_MESSAGE_MB": "1"})
    c = client(srv.address, channel_args=[("grpc.max_send_message_length", 64 << 20)])
    big = np.ones((70_000, 4), np.float32)
    code, _ = status_of(lambda: c.infer("tiny", [infer_input("INPUT0", big, "FP32")]))
    assert code == "RESOURCE_EXHAUSTED"


def test_sigterm_stops_cleanly_with_exit_0(start_server, standard_repo) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM: the server logs its stop and exits 0."""
    srv = start_server(standard_repo)
    assert srv.stop() == 0
    assert any(r.get("event") == "stopped" for r in srv.log)
