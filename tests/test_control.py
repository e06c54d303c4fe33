"""The control plane end to end: `sidecar ctl` against a real server, auth, TLS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import make_models
import numpy as np
import pytest
from helpers import client, infer_input

CA_DAYS = "2"


def _repo(root: Path) -> Path:
    for v in (1, 2, 3):
        make_models.write_model(make_models.tiny_model(v), root, "tiny", v)
    return root


def ctl(address: str, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "ctl", "--address", address, *args],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in {**os.environ, **(env or {})}.items()
             if k != "SIDECAR_CONTROL_TOKEN" or (env and k in env)},
    )


def ctl_json(address: str, *args: str, **kw: Any) -> Any:
    result = ctl(address, "--json", *args, **kw)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_ctl_commands_end_to_end_with_json(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """status, models, versions, load, activate, rollback, pin, unpin, unload and
    events all work and print parseable JSON that reflects each change."""
    srv = start_server(_repo(tmp_path / "repo"))
    a = srv.control_address
    status = ctl_json(a, "status")
    assert status["ready"] is True and status["warm_versions"] == 2
    models = ctl_json(a, "models")["models"]
    assert [(m["name"], int(m["active"]["number"]), int(m["previous"]["number"]))
            for m in models] == [("tiny", 3, 2)]
    versions = ctl_json(a, "versions", "tiny")["versions"]
    assert [(int(v["number"]), v["state"]) for v in versions] == [
        (1, "UNLOADED"), (2, "PREVIOUS"), (3, "ACTIVE")]
    assert all(len(v["digest"]) == 64 and int(v["size"]) > 0 for v in versions)
    assert versions[2]["inputs"] == [{"name": "INPUT0", "datatype": "FP32",
                                      "shape": ["-1", "4"]}]
    digest1 = versions[0]["digest"]

    loaded = ctl_json(a, "load", "tiny", digest1[:12], "--reason", "stage")
    assert loaded["version"]["state"] == "WARM"
    swap = ctl_json(a, "activate", "tiny", "1", "--expected-active", "3")
    assert (int(swap["from_version"]["number"]), int(swap["to_version"]["number"])) == (3, 1)
    x = np.ones((1, 4), np.float32)
    assert client(srv.address).infer("tiny", [infer_input("INPUT0", x, "FP32")]
                                     ).get_response().model_version == "1"
    back = ctl_json(a, "rollback", "tiny")
    assert int(back["to_version"]["number"]) == 3
    assert ctl_json(a, "pin", "tiny")["pinned"] is True
    assert ctl_json(a, "models")["models"][0]["pinned"] is True
    assert ctl_json(a, "unpin", "tiny")["pinned"] is False
    assert ctl_json(a, "unload", "tiny", "1") == {"model": "tiny", "unloaded": "1"}
    events = ctl_json(a, "events", "--model", "tiny")["events"]
    actions = [e["action"] for e in events]
    assert actions == ["restore", "load", "activate", "rollback", "pin", "unpin", "unload"]
    assert all(e["actor"] in {"cli", "startup"} for e in events)
    assert next(e for e in events if e["action"] == "load")["reason"] == "stage"
    page = ctl_json(a, "events", "--after", events[-3]["seq"], "--limit", "1")["events"]
    assert [e["seq"] for e in page] == [events[-2]["seq"]]


def test_ctl_readable_output_and_exit_codes(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Tables for people; one error line and a documented exit code for each failure."""
    srv = start_server(_repo(tmp_path / "repo"))
    a = srv.control_address
    table = ctl(a, "versions", "tiny")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == [
        "VERSION", "STATE", "DIGEST"]
    cases = [
        (("activate", "nosuch"), 3, "NOT_FOUND"),
        (("activate", "tiny", "1", "--expected-active", "2"), 4, "FAILED_PRECONDITION"),
        (("unload", "tiny", "3"), 4, "FAILED_PRECONDITION"),
        (("activate", "tiny", "xyz"), 2, "INVALID_ARGUMENT"),
    ]
    for args, code, name in cases:
        result = ctl(a, *args)
        assert result.returncode == code, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"sidecar ctl: error: {name}:"), lines
    unreachable = ctl("127.0.0.1:1", "--timeout", "2", "status")
    assert unreachable.returncode == 5 and "UNAVAILABLE" in unreachable.stderr


def test_events_follow_streams_new_events(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`ctl events --follow` prints history, then each new event as it happens; a
    stopping server ends the stream instead of waiting out its grace period (120 s
    here, longer than the test waits for the server to exit)."""
    srv = start_server(_repo(tmp_path / "repo"), "--grace-s", "120")
    follower = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "ctl", "--address", srv.control_address, "--json",
         "events", "--follow", "--model", "tiny"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())
        assert first["action"] == "restore"
        assert ctl(srv.control_address, "rollback", "tiny").returncode == 0
        live = json.loads(follower.stdout.readline())
        assert live["action"] == "rollback" and int(live["seq"]) > int(first["seq"])
        # stopping the server ends the stream at once, not after the grace period
        assert srv.stop() == 0
        _, err = follower.communicate(timeout=30)
        assert follower.returncode == 5 and "server is stopping" in err
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate(timeout=30)


def test_bearer_token_is_required_on_the_control_address(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With a token configured: no token is UNAUTHENTICATED, a wrong one is
    PERMISSION_DENIED (exit 6 both), the right one works; inference needs none."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    srv = start_server(_repo(tmp_path / "repo"), "--control-token-file", str(token_file))
    none = ctl(srv.control_address, "status")
    assert none.returncode == 6 and "UNAUTHENTICATED" in none.stderr
    wrong = ctl(srv.control_address, "status", env={"SIDECAR_CONTROL_TOKEN": "guess"})
    assert wrong.returncode == 6 and "PERMISSION_DENIED" in wrong.stderr
    right = ctl(srv.control_address, "--token-file", str(token_file), "rollback", "tiny")
    assert right.returncode == 0, right.stderr
    env_ok = ctl(srv.control_address, "status", env={"SIDECAR_CONTROL_TOKEN": "s3cret-token"})
    assert env_ok.returncode == 0
    x = np.ones((1, 4), np.float32)
    assert client(srv.address).infer("tiny", [infer_input("INPUT0", x, "FP32")])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1, and a client certificate."""
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", CA_DAYS, "-subj", "/CN=test-ca", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", CA_DAYS, "-extfile",
                 f"{name}.ext", cwd=d)
    return d


def test_mutual_tls_on_control_and_tls_on_inference(start_server, tmp_path, pki) -> None:  # type: ignore[no-untyped-def]
    """The control address with mutual TLS accepts a client certificate signed by
    its CA and refuses a client without one; the inference address serves TLS."""
    srv = start_server(
        _repo(tmp_path / "repo"),
        "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
        "--control-tls-cert", str(pki / "server.pem"),
        "--control-tls-key", str(pki / "server.key"),
        "--control-tls-client-ca", str(pki / "ca.pem"),
    )
    with_cert = ctl(srv.control_address, "--tls-ca", str(pki / "ca.pem"),
                    "--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key"),
                    "status")
    assert with_cert.returncode == 0, with_cert.stderr
    without = ctl(srv.control_address, "--tls-ca", str(pki / "ca.pem"), "--timeout", "5",
                  "status")
    assert without.returncode == 5, without.stderr
    plain = ctl(srv.control_address, "--timeout", "5", "status")
    assert plain.returncode == 5
    c = client(srv.address, ssl=True, root_certificates=str(pki / "ca.pem"))
    x = np.ones((1, 4), np.float32)
    assert c.infer("tiny", [infer_input("INPUT0", x, "FP32")]).get_response().model_version == "3"


def _ctl_anywhere(*args: str, env: dict[str, str] | None = None
                  ) -> subprocess.CompletedProcess[str]:
    """`sidecar ctl ARGS` as typed, with no option added before the command."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "ctl", *args], capture_output=True, text=True,
        timeout=60, env={k: v for k, v in {**os.environ, **(env or {})}.items()
                         if not k.startswith("SIDECAR_C") or (env and k in env)})


def test_global_options_work_after_the_command(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`ctl models --json`, `ctl status --address A --token-file F`: the options of
    `ctl` work after the command as before it, and one given before the command is
    not undone by the command's parser."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    srv = start_server(_repo(tmp_path / "repo"), "--control-token-file", str(token_file))
    a = srv.control_address
    after = _ctl_anywhere("models", "--json", "--address", a, "--token-file", str(token_file))
    assert after.returncode == 0, after.stderr
    assert [m["name"] for m in json.loads(after.stdout)["models"]] == ["tiny"]
    mixed = _ctl_anywhere("--json", "--address", a, "status", "--token-file", str(token_file),
                          "--timeout", "10")
    assert mixed.returncode == 0, mixed.stderr
    assert json.loads(mixed.stdout)["ready"] is True
    swap = _ctl_anywhere("--address", a, "--token-file", str(token_file), "rollback", "tiny",
                         "--json", "--actor", "deployer", "--reason", "after")
    assert swap.returncode == 0, swap.stderr
    events = ctl_json(a, "--token-file", str(token_file), "events", "--model", "tiny")["events"]
    assert (events[-1]["action"], events[-1]["actor"]) == ("rollback", "deployer")


def test_token_problems_say_what_to_do(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No token: UNAUTHENTICATED pointing to --token-file; a token file that cannot
    be read or is empty: exit 2 naming the file."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    srv = start_server(_repo(tmp_path / "repo"), "--control-token-file", str(token_file))
    none = ctl(srv.control_address, "status")
    assert none.returncode == 6
    assert "--token-file or SIDECAR_CTL_TOKEN_FILE" in none.stderr
    missing = ctl(srv.control_address, "status", "--token-file", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [
        f"sidecar ctl: error: cannot read token file {tmp_path / 'nope'}: No such file or"
        " directory"]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    blank = ctl(srv.control_address, "--token-file", str(empty), "status")
    assert blank.returncode == 2
    assert blank.stderr.splitlines() == [f"sidecar ctl: error: token file {empty} is empty"]


def test_events_tail_gives_the_newest_oldest_first(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`events --tail N`: the newest N events, printed oldest first (per model with
    --model; all of them when fewer exist); `--limit` still pages from the oldest;
    with --follow, the tail and then each new event."""
    srv = start_server(_repo(tmp_path / "repo"))
    a = srv.control_address
    for _ in range(4):
        assert ctl(a, "rollback", "tiny").returncode == 0
    assert ctl(a, "pin", "tiny").returncode == 0
    every = ctl_json(a, "events", "--limit", "1000")["events"]
    seqs = [e["seq"] for e in every]
    assert [e["seq"] for e in ctl_json(a, "events", "--tail", "2")["events"]] == seqs[-2:]
    assert [e["seq"] for e in ctl_json(a, "events", "--limit", "2")["events"]] == seqs[:2]
    assert [e["seq"] for e in ctl_json(a, "events", "--tail", "1000")["events"]] == seqs
    tiny = [e for e in every if e["model"] == "tiny"]
    tail = ctl_json(a, "events", "--model", "tiny", "--tail", "3")
    assert [e["action"] for e in tail["events"]] == ["rollback", "rollback", "pin"]
    assert [e["seq"] for e in tail["events"]] == [e["seq"] for e in tiny[-3:]]
    text = ctl(a, "events", "--tail", "2")
    assert text.returncode == 0
    assert [line.split()[0] for line in text.stdout.splitlines()] == [
        f"#{s}" for s in seqs[-2:]]
    assert ctl(a, "events", "--tail", "0").returncode == 2
    assert ctl(a, "events", "--tail", "1", "--limit", "1").returncode == 2

    follower = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "ctl", "--address", a, "events", "--json",
         "--model", "tiny", "--tail", "1", "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        assert json.loads(follower.stdout.readline())["seq"] == tiny[-1]["seq"]
        assert ctl(a, "unpin", "tiny").returncode == 0
        live = json.loads(follower.stdout.readline())
        assert live["action"] == "unpin" and int(live["seq"]) == int(seqs[-1]) + 1
    finally:
        follower.kill()
        follower.communicate(timeout=30)


def test_probe_names_the_health_services(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`probe --service nope`: NOT_FOUND with a message saying which services exist."""
    srv = start_server(_repo(tmp_path / "repo"))
    ok = subprocess.run([sys.executable, "-m", "sidecar", "probe", "--address", srv.address,
                         "--service", "tiny"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout == f"{srv.address} tiny: SERVING\n"
    nope = subprocess.run([sys.executable, "-m", "sidecar", "probe", "--address", srv.address,
                           "--service", "nope"], capture_output=True, text=True, timeout=60)
    assert nope.returncode == 1
    assert nope.stderr.splitlines() == [
        f"{srv.address} nope: NOT_FOUND: no health service 'nope' (the server's is \"\","
        " each model's is its name)"]
