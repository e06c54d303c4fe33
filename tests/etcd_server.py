"""A real single-node etcd for tests: Debian's `etcd` binary on free loopback ports.

`EtcdServer(data_dir)` starts `etcd` (3.4, package etcd-server; `make test` installs
it when missing) with the command line of the spec, plus `--unsafe-no-fsync` (the
data is scratch), and returns once etcd logs that it serves client traffic (its
readiness line, waited on as an event) and `GET /health` answers `{"health":"true"}`.
`kill()` (SIGKILL) and `restart()` keep the same ports and data directory, so a
client sees the very same server go away and come back with its data. Its log goes
to `etcd.log` in the data directory's parent and is quoted when it fails to start.

`EtcdServer(data_dir, tls=TlsFiles.create(directory))` serves its clients over
https only, with a server certificate for 127.0.0.1 and `--client-cert-auth` (a
client must show a certificate of the same test CA); `TlsFiles.create` makes the
CA and both certificates with `openssl`. `enable_auth()` turns etcd's auth on.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc

from sidecar.fleet.proto import etcd_pb2, etcd_pb2_grpc

#: Seconds etcd may take to answer /health as healthy (a single node takes ~0.3 s).
START_TIMEOUT_S = 30.0
#: Seconds `stop()` waits after SIGTERM before SIGKILL.
STOP_TIMEOUT_S = 10.0
INSTALL_HINT = ("run `make test` (it installs Debian's etcd-server when etcd is missing) "
                "or `apt-get install etcd-server`")


class EtcdServerError(RuntimeError):
    """etcd is missing or did not become healthy."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _openssl(*args: str | Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise EtcdServerError("openssl is not on PATH: the TLS tests make their certificates "
                              "with it (apt-get install openssl)")
    result = subprocess.run([binary, *map(str, args)], capture_output=True, text=True,
                            timeout=60, check=False)
    if result.returncode != 0:
        raise EtcdServerError(f"openssl {' '.join(map(str, args[:2]))} failed: "
                              f"{result.stderr.strip()}")


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate,
    PEM files (P-256 keys, valid for a day)."""

    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def create(cls, directory: Path, *, client_name: str = "sidecar-test-client") -> TlsFiles:
        """Make the files under directory with openssl. The client's CN is not an etcd
        user (with --client-cert-auth and auth on, etcd would take a CN as the user
        name of calls without a token)."""
        directory.mkdir(parents=True, exist_ok=True)
        files = cls(*(directory / name for name in (
            "ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem",
            "client-key.pem")))
        curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
        _openssl("req", "-x509", *curve, "-keyout", files.ca_key, "-out", files.ca,
                 "-days", "1", "-subj", "/CN=sidecar test CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        for cert, key, cn, usage in (
                (files.server_cert, files.server_key, "127.0.0.1",
                 "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                (files.client_cert, files.client_key, client_name,
                 "extendedKeyUsage=clientAuth")):
            request = cert.with_suffix(".csr")
            extensions = cert.with_suffix(".ext")
            extensions.write_text(usage + "\n")
            _openssl("req", "-new", *curve, "-keyout", key, "-out", request,
                     "-subj", f"/CN={cn}")
            _openssl("x509", "-req", "-in", request, "-CA", files.ca, "-CAkey", files.ca_key,
                     "-CAcreateserial", "-out", cert, "-days", "1", "-extfile", extensions)
        return files


class EtcdServer:
    """One `etcd` process; `endpoint` is its client address, HOST:PORT."""

    def __init__(self, data_dir: Path, *, name: str = "t", tls: TlsFiles | None = None) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise EtcdServerError(f"etcd is not on PATH: {INSTALL_HINT}")
        self.binary = binary
        self.name = name
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.client_port = _free_port()
        self.peer_port = _free_port()
        self.endpoint = f"127.0.0.1:{self.client_port}"
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://{self.endpoint}"
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()

    def command(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        tls = [] if self.tls is None else [
            "--cert-file", str(self.tls.server_cert), "--key-file", str(self.tls.server_key),
            "--trusted-ca-file", str(self.tls.ca), "--client-cert-auth"]
        return [
            self.binary, "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}", *tls,
            "--unsafe-no-fsync", "--logger", "zap", "--log-outputs", "stderr",
        ]

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start etcd (on this server's ports and data) and wait until it is healthy."""
        if self.running:
            raise EtcdServerError("etcd is already running")
        self._serving = threading.Event()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.PIPE,
                                          stdin=subprocess.DEVNULL)
        threading.Thread(target=self._copy_log, args=(self._proc, self._serving),
                         daemon=True).start()
        try:
            self._wait_healthy()
        except BaseException:
            self.kill()
            raise

    def _copy_log(self, proc: subprocess.Popen[bytes], serving: threading.Event) -> None:
        """etcd's log into log_path, line by line; `serving` is set when etcd says it
        serves client traffic (its readiness), or when its log ends (it exited)."""
        assert proc.stderr is not None
        with proc.stderr, self.log_path.open("ab") as log:
            for line in proc.stderr:
                log.write(line)
                log.flush()
                if b"serving client traffic" in line:
                    serving.set()
        serving.set()

    def _wait_healthy(self) -> None:
        """Wait for etcd's own readiness line (with a deadline), then check that
        `GET /health` answers `{"health":"true"}`."""
        if not self._serving.wait(START_TIMEOUT_S):
            raise EtcdServerError(f"etcd on {self.endpoint} not serving {START_TIMEOUT_S:.0f} s"
                                  f" after start; log:\n{self.log_tail()}")
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise EtcdServerError(f"etcd exited with {self._proc.returncode} at start; "
                                  f"log:\n{self.log_tail()}")
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=self.tls.ca)
            context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=START_TIMEOUT_S,
                                        context=context) as reply:
                body = reply.read()
            healthy = json.loads(body).get("health") == "true"
        except (OSError, urllib.error.URLError, ValueError) as err:
            body, healthy = str(err).encode(), False
        if not healthy:
            raise EtcdServerError(f"etcd on {self.endpoint} serves but is not healthy"
                                  f" ({body.decode(errors='replace')[:200]}); log:\n"
                                  f"{self.log_tail()}")

    def channel(self) -> grpc.Channel:
        """A plain (synchronous) gRPC channel to it, with the test CA and client
        certificate when it serves TLS."""
        if self.tls is None:
            return grpc.insecure_channel(self.endpoint)
        return grpc.secure_channel(self.endpoint, grpc.ssl_channel_credentials(
            self.tls.ca.read_bytes(), self.tls.client_key.read_bytes(),
            self.tls.client_cert.read_bytes()))

    def enable_auth(self, root_password: str, users: dict[str, str] | None = None) -> None:
        """Turn etcd's auth on: user `root` (the role `root`: everything allowed) with
        root_password, and `users` (name: password) without any role, so anything
        they try is refused with "permission denied"."""
        with self.channel() as channel:
            auth = etcd_pb2_grpc.AuthStub(channel)
            auth.UserAdd(etcd_pb2.AuthUserAddRequest(name="root", password=root_password),
                         timeout=10)
            auth.UserGrantRole(etcd_pb2.AuthUserGrantRoleRequest(user="root", role="root"),
                               timeout=10)
            for name, password in (users or {}).items():
                auth.UserAdd(etcd_pb2.AuthUserAddRequest(name=name, password=password),
                             timeout=10)
            auth.AuthEnable(etcd_pb2.AuthEnableRequest(), timeout=10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: the server vanishes as in a crash; its data stays."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()

    def restart(self) -> None:
        """Kill it if it runs, then start it again on the same ports and data directory."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not exited after STOP_TIMEOUT_S."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
