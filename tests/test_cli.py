"""The `sidecar` command: help, settings from flags and environment, clear errors."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import make_models
from helpers import client
from serverlog import ServerLog

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


def test_environment_error_is_one_line(tmp_path: Path) -> None:
    """A SIDECAR_* value that does not parse: only `sidecar: error: SIDECAR_X=...:
    reason` (no usage text), exit 2; the same for a value outside the choices."""
    cases = {"SIDECAR_MAX_MESSAGE_MB": ("lots", "expected an integer"),
             "SIDECAR_GRACE_S": ("soon", "expected a number"),
             "SIDECAR_WATCH": ("maybe", "expected true or false"),
             "SIDECAR_LOG_FORMAT": ("xml", "choose from json, text")}
    for name, (value, reason) in cases.items():
        result = _run("serve", "--model-repository", str(tmp_path), env={name: value})
        assert result.returncode == 2, name
        assert result.stderr.splitlines() == [f"sidecar: error: {name}={value!r}: {reason}"]


def test_address_that_is_not_host_port_is_a_configuration_error(tmp_path: Path) -> None:
    """`--listen 8001` (no host) and other addresses that are not HOST:PORT: one
    line naming the flag, exit 2 (bad configuration), before anything binds."""
    for flag, value in (("--listen", "8001"), ("--control-listen", "127.0.0.1:port"),
                        ("--metrics-listen", "127.0.0.1:99999"), ("--listen", "[::1:8001")):
        result = _run("serve", "--model-repository", str(tmp_path), "--listen", "127.0.0.1:0",
                      "--control-listen", "127.0.0.1:0", "--metrics-listen", "", flag, value)
        assert result.returncode == 2, (flag, value, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"sidecar: error: {flag} {value!r} is not HOST:PORT"), lines


def test_a_model_folder_given_as_the_repository_is_refused(tmp_path: Path) -> None:
    """`--model-repository examples/models/tiny` (one level too deep: every folder a
    number holding model.onnx): exit 2 with one line saying to give its parent."""
    repo = tmp_path / "models"
    for version in (1, 2):
        make_models.write_model(make_models.tiny_model(version), repo, "tiny", version)
    result = _run("serve", "--model-repository", str(repo / "tiny"),
                  "--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"sidecar: error: model repository {repo / 'tiny'} holds version folders (1, 2, each"
        f" with model.onnx): this looks like a model folder; give its parent ({repo})"]


def test_numbered_folders_beside_models_are_a_warning(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """All-digit model names are valid: a folder `7/model.onnx` beside real models is
    served as it always was (a model without versions), with a warning saying why
    it serves nothing."""
    repo = tmp_path / "repo"
    make_models.write_model(make_models.tiny_model(1), repo, "tiny", 1)
    (repo / "7").mkdir()
    (repo / "7" / "model.onnx").write_bytes(make_models.tiny_model(2).SerializeToString())
    srv = start_server(repo, "--no-strict-readiness")
    warning = next(r for r in srv.log if r.get("folders") == ["7"])
    assert warning["level"] == "warning" and "look like versions" in warning["event"]


def test_text_log_says_how_to_reach_the_control_address(tmp_path: Path) -> None:
    """With --log-format text, a line after `serving` gives the `sidecar ctl`
    command for the control address (the port chosen for port 0); the JSON log has
    no such line, and its `serving` record keeps its fields."""
    repo = make_models_repo(tmp_path / "repo")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "--model-repository", str(repo),
         "--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0", "--metrics-listen", "",
         "--state-dir", str(tmp_path / "state"), "--log-format", "text"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    log = ServerLog(proc.stdout)
    try:
        serving = log.wait_for("non-json", 60, line=_Contains(" sidecar: serving "))
        control = serving["line"].split("control_address=")[1].split()[0]
        hint = log.wait_for("non-json", 60, line=_Contains("control it with:"))
        assert hint["line"].rstrip().endswith(
            f"control it with: {sys.executable} -m sidecar ctl --address {control} status")
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
        proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


def test_json_serving_record_is_unchanged(server) -> None:  # type: ignore[no-untyped-def]
    """The JSON `serving` record (parsed by tests and benchmarks) has exactly its
    fields, and no control hint line is logged in JSON."""
    serving = next(r for r in server.log if r.get("event") == "serving")
    assert set(serving) == {"ts", "level", "logger", "event", "address", "control_address",
                            "metrics_address", "models", "ready"}
    assert not any("control it with" in str(r.get("event")) for r in server.log)


class _Contains(str):
    """Equal to any string that contains it (for ServerLog.wait_for's fields)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and str(self) in other

    __hash__ = str.__hash__


def make_models_repo(repo: Path) -> Path:
    make_models.build_examples(repo)
    return repo
