"""Settings: one frozen object, read once from flags and `SIDECAR_*` variables.

Each field's metadata holds its help text; the CLI builds `sidecar serve`'s
flags from these fields, so a setting, its flag (`--model-repository`) and its
variable (`SIDECAR_MODEL_REPOSITORY`) cannot drift apart. Precedence: flag,
then environment, then the default here.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sidecar.source.batching import BatchingConfig, parse_batching

MIB = 1024 * 1024


def _setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the sidecar can be told at start. Documented in README.md."""

    model_repository: Path = _setting(
        Path("models"), "Model repository: <dir>/<model>/<version>/model.onnx."
    )
    listen: str = _setting(
        "0.0.0.0:8001",
        "HOST:PORT of the inference gRPC server (Open Inference Protocol, health,"
        " reflection). Port 0 picks a free port; the chosen address is logged.",
    )
    control_listen: str = _setting(
        "127.0.0.1:8002",
        "HOST:PORT of the control gRPC server (sidecar.control.v1.ModelControl and"
        " the OIP repository RPCs). Loopback by default: only the pod reaches it.",
    )
    metrics_listen: str = _setting(
        "0.0.0.0:8003",
        "HOST:PORT of the Prometheus metrics endpoint (HTTP, /metrics); empty: off.",
    )
    access_log: bool = _setting(
        False, "Log one line per inference request (off: lifecycle events only)."
    )
    control_token_file: str = _setting(
        "",
        "File holding the bearer token the control server requires (empty: the"
        " SIDECAR_CONTROL_TOKEN variable, else no token).",
    )
    state_dir: str = _setting(
        "",
        "Directory for the persisted serving state (state.json, serving.json) and the"
        " event log (events.jsonl). Empty: .sidecar-state/<repository name>-<hash of"
        " its path> in the working directory, so each repository has its own. The"
        " state records its repository; a state written for another one is set"
        " aside. In the container image: /var/lib/sidecar, a volume.",
    )
    events_max_mb: float = _setting(
        16.0,
        "Size in MiB at which the event log events.jsonl is rotated to"
        " events.jsonl.1 (the older ones move up to .2, .3, ...). The state"
        " directory needs about (--events-keep + 1) times this for events.",
    )
    events_keep: int = _setting(
        4,
        "Rotated event log files kept (events.jsonl.1 to .N); at rotation the"
        " oldest beyond N is deleted. At least 1.",
    )
    warm_versions: int = _setting(
        2,
        "Versions kept loaded per model: the active one plus the most recently"
        " active ones. 2 keeps the previous version warm for an instant rollback; 1"
        " saves its memory, and a rollback then needs a load.",
    )
    max_loaded: int = _setting(
        4,
        "Versions of one model loaded at most: the active, the previous and a"
        " canary or shadow always stay; versions loaded by `ctl load` or the"
        " watcher's load policy beyond this are unloaded, the oldest first. At"
        " least --warm-versions.",
    )
    crash_window_s: float = _setting(
        120.0,
        "Crash-loop guard: a version serving when the process ended without a clean"
        " stop, within this many seconds of starting to serve, counts one crash.",
    )
    crash_limit: int = _setting(
        2,
        "Crash-loop guard: after this many such crashes in a row, the next start"
        " rolls the version back before serving and quarantines it (0: off).",
    )
    tls_cert: str = _setting("", "PEM certificate chain for TLS on --listen (with --tls-key).")
    tls_key: str = _setting("", "PEM private key for TLS on --listen.")
    control_tls_cert: str = _setting(
        "", "PEM certificate chain for TLS on --control-listen (with --control-tls-key)."
    )
    control_tls_key: str = _setting("", "PEM private key for TLS on --control-listen.")
    control_tls_client_ca: str = _setting(
        "",
        "PEM CA bundle: with it the control server requires client certificates it"
        " signed (mutual TLS).",
    )
    watch: bool = _setting(
        True,
        "Watch the model repository and act on new, changed and removed versions"
        " (--no-watch: only commands change what serves).",
    )
    watch_poll: bool = _setting(
        False,
        "Poll the repository instead of inotify (network and FUSE filesystems that"
        " send no events).",
    )
    watch_poll_ms: int = _setting(500, "Polling interval with --watch-poll, in ms.")
    watch_settle_ms: int = _setting(
        500,
        "A model file counts as complete once unchanged for this long (or older than"
        " this): half-copied files are never loaded.",
    )
    watch_policy: str = _setting(
        "activate",
        "What the watcher does with a new highest version of a model, unless the"
        " model's sidecar.json says otherwise: activate it, load it warm, or ignore it.",
        choices=("activate", "load", "ignore"),
    )
    guard: bool = _setting(
        True,
        "Automatic rollback of a newly activated version whose error rate or latency"
        " spikes, and canary/shadow verdicts (settings per model: docs/guard.md).",
    )
    feedback_max_ids: int = _setting(
        100_000,
        "Quality feedback: request ids whose answers are remembered per model (for"
        " models with \"quality\" in their sidecar.json, requests that carry an id);"
        " beyond this the oldest are forgotten, and truth for them is unmatched.",
    )
    feedback_max_age_s: float = _setting(
        600.0,
        "Quality feedback: seconds an answer is remembered for its request id; truth"
        " that comes later is unmatched.",
    )
    max_message_mb: int = _setting(
        64,
        "Largest gRPC message received or sent, in MiB (grpc's default is 4)."
        " Larger requests get RESOURCE_EXHAUSTED. grpc parses a request on the"
        " event loop (about 10 ms per MiB here), so a larger limit lets one request"
        " delay every other one for longer: see bench/worst.py.",
    )
    inference_threads: int = _setting(
        0,
        "Threads that run inferences too long to run inline on the event loop"
        " (0: one per CPU core).",
    )
    inline_max_us: int = _setting(
        1000,
        "Run a version's inferences inline on the event loop while its mean"
        " compute time stays below this many microseconds; longer ones go to the"
        " thread pool (0: always the pool). See docs/design.md.",
    )
    max_batch_size: int = _setting(
        0,
        "Dynamic batching for every model whose sidecar.json has no"
        " \"dynamic_batching\": concurrent requests of one version run as one"
        " onnxruntime run of up to this many rows (0: off). See docs/batching.md.",
    )
    max_queue_delay_us: int = _setting(
        0,
        "With dynamic batching, how long a queued request may wait for others,"
        " in microseconds, and only while more requests are on their way (a lone"
        " request never waits).",
    )
    max_concurrent_rpcs: int = _setting(
        0, "Calls accepted at once before RESOURCE_EXHAUSTED (0: unlimited)."
    )
    intra_op_threads: int = _setting(
        1,
        "onnxruntime threads inside one operator (0: onnxruntime's default, one"
        " per physical core).",
    )
    inter_op_threads: int = _setting(
        1, "onnxruntime threads across operators (0: onnxruntime's default)."
    )
    graph_optimization: str = _setting(
        "all",
        "onnxruntime graph optimisation level.",
        choices=("disable", "basic", "extended", "all"),
    )
    providers: str = _setting(
        "CPUExecutionProvider",
        "Comma-separated onnxruntime execution providers, in order of preference.",
    )
    load_threads: int = _setting(
        2, "Versions loaded at once (loads never run on the request path)."
    )
    strict_readiness: bool = _setting(
        True,
        "Server readiness (ServerReady, health service \"\") requires every model"
        " in the repository to have a serving version; off: the server is ready"
        " once startup is done.",
    )
    grace_s: float = _setting(
        20.0, "On SIGTERM/SIGINT, seconds in-flight calls get to finish."
    )
    fleet_etcd: str = _setting(
        "",
        "Fleet mode: HOST:PORT[,HOST:PORT...] of etcd, where the replicas of a fleet"
        " share what serves (docs/fleet.md). Empty: no fleet, the sidecar decides alone.",
    )
    fleet_etcd_ca: str = _setting(
        "", "Fleet mode: PEM CA bundle that signs etcd's server certificate (TLS on;"
        " https:// endpoints without it use the system's roots).",
    )
    fleet_etcd_cert: str = _setting(
        "", "Fleet mode: PEM client certificate for etcd (mutual TLS, with --fleet-etcd-key).",
    )
    fleet_etcd_key: str = _setting("", "Fleet mode: PEM private key of --fleet-etcd-cert.")
    fleet_etcd_user: str = _setting(
        "", "Fleet mode: etcd user name (etcd auth; with --fleet-etcd-password-file).",
    )
    fleet_etcd_password_file: str = _setting(
        "", "Fleet mode: file holding the etcd user's password (a file, not a flag: it"
        " stays out of the process list).",
    )
    fleet_name: str = _setting(
        "", "Fleet mode: the fleet's name (e.g. the Deployment's); required with"
        " --fleet-etcd. Replicas with the same name serve the same versions.",
    )
    fleet_replica: str = _setting(
        "", "Fleet mode: this replica's name (empty: the HOSTNAME variable, a pod's"
        " name, else the host name).",
    )
    fleet_lease_s: int = _setting(
        10, "Fleet mode: TTL of the replica's membership lease, in seconds: a replica"
        " that stops without leaving disappears from `ctl fleet` after this long.",
    )
    fleet_timeout_s: float = _setting(
        2.0, "Fleet mode: deadline of each etcd call, in seconds: a command that would"
        " change the fleet's state fails with UNAVAILABLE after this long at most.",
    )
    log_format: str = _setting("json", "Log line format.", choices=("json", "text"))
    log_level: str = _setting(
        "info", "Log level.", choices=("debug", "info", "warning", "error")
    )

    @property
    def state_path(self) -> Path:
        """The state directory: as set, or one of its own for the repository."""
        if self.state_dir:
            return Path(self.state_dir)
        repository = self.model_repository.absolute()
        tag = hashlib.sha256(str(repository).encode()).hexdigest()[:8]
        return Path(".sidecar-state") / f"{repository.name or 'root'}-{tag}"

    @property
    def max_message_bytes(self) -> int:
        # grpc caps message sizes at a signed 32-bit int.
        return min(self.max_message_mb * MIB, 2**31 - 1)

    @property
    def provider_list(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.providers.split(",") if p.strip())

    @property
    def default_batching(self) -> BatchingConfig | None:
        """The server-wide dynamic batching (None: off), checked like a model's."""
        return parse_batching({"max_batch_size": self.max_batch_size,
                               "max_queue_delay_microseconds": self.max_queue_delay_us})

    @property
    def replica_name(self) -> str:
        """This replica's name in its fleet."""
        return self.fleet_replica or os.environ.get("HOSTNAME", "") or socket.gethostname()

    @property
    def effective_inference_threads(self) -> int:
        return self.inference_threads or (os.cpu_count() or 1)


def env_name(name: str) -> str:
    return "SIDECAR_" + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def setting_fields() -> list[Any]:
    return list(fields(Settings))


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")
