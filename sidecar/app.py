"""Composition root: settings -> parts -> servers; signals; ordered shutdown.

The only module that builds and wires the parts. Startup: bind the port (so a
port in use fails fast), start serving liveness, load the models, then report
ready. Shutdown on SIGTERM/SIGINT: health NOT_SERVING at once, stop taking
calls, let in-flight calls finish within the grace period, unload, exit 0.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import math
import os
import shlex
import shutil
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sidecar import metrics
from sidecar.fleet.etcd import EtcdOptions
from sidecar.fleet.link import FleetLink
from sidecar.fleet.record import name_problem
from sidecar.guard.guard import Guard
from sidecar.guard.rules import GuardSettings
from sidecar.guard.shadow import ShadowMirror
from sidecar.handlers.batcher import BatcherFactory
from sidecar.handlers.control import ControlPlane
from sidecar.handlers.dataplane import DataPlane
from sidecar.handlers.feedback import FeedbackPlane
from sidecar.loader.onnx import SessionConfig
from sidecar.manager.manager import ModelManager
from sidecar.manager.sync import RepositorySync
from sidecar.quality.engine import QualityEngine
from sidecar.rpc.auth import read_token, server_credentials
from sidecar.rpc.server import (
    BindError,
    build_control_server,
    build_inference_server,
    check_bindable,
)
from sidecar.settings import MIB, Settings
from sidecar.source.policy import read_model_settings
from sidecar.source.repository import MODEL_FILE, is_model_name, parse_version
from sidecar.source.watcher import RepositoryWatcher
from sidecar.state.events import EventLog
from sidecar.state.store import StateStore

log = logging.getLogger("sidecar")


class ConfigError(ValueError):
    """A setting that cannot work (reported as one line, exit code 2)."""


def session_config(settings: Settings) -> SessionConfig:
    config = SessionConfig(
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        graph_optimization=settings.graph_optimization,
        providers=settings.provider_list,
    )
    try:
        config.check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return config


def address_problem(address: str) -> str:
    """Why `address` is not a HOST:PORT to listen on ("" if it is one)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or int(port) > 65535:
        return "is not HOST:PORT"
    if host.startswith("[") != host.endswith("]"):
        return "is not HOST:PORT (IPv6 hosts in brackets: [::1]:PORT)"
    return ""


def _check_addresses(settings: Settings) -> None:
    for flag, address, example, optional in (
            ("--listen", settings.listen, "0.0.0.0:8001", False),
            ("--control-listen", settings.control_listen, "127.0.0.1:8002", False),
            ("--metrics-listen", settings.metrics_listen, "0.0.0.0:8003", True)):
        if optional and not address:
            continue
        problem = address_problem(address)
        if problem:
            raise ConfigError(f"{flag} {address!r} {problem}: e.g. {example}"
                              " (port 0 picks a free port)")


def _check_repository_layout(repo: Path) -> None:
    """A repository whose folders all look like versions (`1/model.onnx`, ...) is a
    model folder given one level too deep: refused. Some such folders beside real
    models: a warning (all-digit model names are valid, but such a "model" holds
    its file without a version folder, so it never serves)."""
    try:
        folders = [e for e in sorted(repo.iterdir()) if is_model_name(e.name) and e.is_dir()]
    except OSError:
        return  # the scan reports an unreadable repository
    numbered = sorted((e for e in folders
                       if parse_version(e.name) is not None and (e / MODEL_FILE).is_file()),
                      key=lambda e: int(e.name))
    if not numbered:
        return
    names = ", ".join(e.name for e in numbered[:5]) + (", ..." if len(numbered) > 5 else "")
    if len(numbered) == len(folders):
        parent = repo.parent if repo.name else repo.absolute().parent
        raise ConfigError(
            f"model repository {repo} holds version folders ({names}, each with"
            f" {MODEL_FILE}): this looks like a model folder; give its parent ({parent})")
    log.warning("model folders that look like versions: each holds model.onnx without a"
                " version folder, so it serves nothing (expected <model>/<version>/model.onnx)",
                extra={"repository": str(repo), "folders": [e.name for e in numbered]})


def check(settings: Settings) -> None:
    """Refuse settings that cannot work, with one line (ConfigError, exit code 2)."""
    _check_addresses(settings)
    repo = settings.model_repository
    if not repo.is_dir():
        what = "is not a directory" if repo.exists() else "does not exist"
        raise ConfigError(f"model repository {repo} {what}")
    _check_repository_layout(repo)
    if settings.max_message_mb <= 0:
        raise ConfigError("max-message-mb must be positive")
    if settings.warm_versions < 1:
        raise ConfigError("warm-versions must be at least 1")
    try:
        settings.default_batching  # noqa: B018 (checked here, used at load)
    except ValueError as exc:
        raise ConfigError(str(exc).replace("dynamic_batching.max_batch_size", "max-batch-size")
                          .replace("dynamic_batching.max_queue_delay_microseconds",
                                   "max-queue-delay-us")) from exc
    if settings.max_loaded < settings.warm_versions:
        raise ConfigError(f"max-loaded ({settings.max_loaded}) must be at least warm-versions"
                          f" ({settings.warm_versions})")
    if not settings.crash_window_s > 0 or settings.crash_limit < 0:
        raise ConfigError("crash-window-s must be positive and crash-limit at least 0")
    if not (math.isfinite(settings.events_max_mb) and settings.events_max_mb > 0):
        raise ConfigError("events-max-mb must be a positive number")
    if settings.events_keep < 1:
        raise ConfigError("events-keep must be at least 1")
    if settings.feedback_max_ids < 1 or not (math.isfinite(settings.feedback_max_age_s)
                                             and settings.feedback_max_age_s > 0):
        raise ConfigError("feedback-max-ids must be at least 1 and feedback-max-age-s a"
                          " positive number")
    _check_fleet(settings)


def etcd_options(settings: Settings) -> EtcdOptions:
    """How to reach the fleet's etcd (ConfigError if the settings cannot work)."""
    password = ""
    if settings.fleet_etcd_password_file:
        try:
            password = Path(settings.fleet_etcd_password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"fleet-etcd-password-file: {exc.strerror}:"
                              f" {settings.fleet_etcd_password_file}") from exc
    try:
        return EtcdOptions.parse(
            settings.fleet_etcd, deadline=settings.fleet_timeout_s,
            ca_file=settings.fleet_etcd_ca, cert_file=settings.fleet_etcd_cert,
            key_file=settings.fleet_etcd_key, username=settings.fleet_etcd_user,
            password=password)
    except ValueError as exc:
        raise ConfigError(f"fleet-etcd: {exc}") from exc


def _check_fleet(settings: Settings) -> None:
    if not settings.fleet_etcd:
        given = [name for name in ("fleet_name", "fleet_etcd_ca", "fleet_etcd_cert",
                                   "fleet_etcd_key", "fleet_etcd_user",
                                   "fleet_etcd_password_file", "fleet_replica")
                 if getattr(settings, name)]
        if given:
            raise ConfigError(f"{given[0].replace('_', '-')} needs fleet-etcd (the etcd"
                              " endpoints)")
        return
    if not settings.fleet_name:
        raise ConfigError("fleet-etcd needs fleet-name (the fleet's name)")
    for kind, name in (("fleet", settings.fleet_name), ("replica", settings.replica_name)):
        problem = name_problem(kind, name)
        if problem:
            raise ConfigError(problem)
    etcd_options(settings)
    if settings.fleet_lease_s < 2:
        raise ConfigError("fleet-lease-s must be at least 2 (etcd's shortest lease)")


def _ctl_program() -> list[str]:
    """How this process was started, as the words of a `sidecar` command."""
    program = sys.argv[0] if sys.argv else ""
    if Path(program).name != "sidecar":
        return [sys.executable, "-m", "sidecar"]
    on_path = shutil.which("sidecar")
    if on_path and Path(on_path).resolve() == Path(program).resolve():
        return ["sidecar"]
    return [program]


def ctl_hint(settings: Settings, control_address: str, token: str) -> str:
    """The `sidecar ctl` command that reaches this sidecar's control address."""
    host, _, port = control_address.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
    words = [*_ctl_program(), "ctl", "--address", f"{host}:{port}"]
    if settings.control_tls_cert:
        words += ["--tls-ca", "CA.pem"]
        if settings.control_tls_client_ca:
            words += ["--tls-cert", "CLIENT.pem", "--tls-key", "CLIENT.key"]
    if settings.control_token_file:
        words += ["--token-file", settings.control_token_file]
    command = shlex.join(words) + " status"
    if token and not settings.control_token_file:
        command += " (with the token in SIDECAR_CONTROL_TOKEN)"
    return command


def _credentials(cert: str, key: str, client_ca: str = "") -> Any:
    if not (cert or key or client_ca):
        return None
    try:
        return server_credentials(cert, key, client_ca)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"TLS: {exc}") from exc


def _token(settings: Settings) -> str:
    try:
        return read_token(settings.control_token_file,
                          os.environ.get("SIDECAR_CONTROL_TOKEN", ""))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"control token: {exc}") from exc


def _guard_file_settings(repository: Path, model: str) -> dict[str, Any]:
    """The "guard" object of the model's sidecar.json ({} if none)."""
    settings, _ = read_model_settings(repository / model)
    section = settings.get("guard", {})
    return section if isinstance(section, dict) else {}


def _quality_file_settings(repository: Path, model: str) -> object:
    """The "quality" object of the model's sidecar.json (None if none; anything
    else is reported by the quality engine, and quality stays off)."""
    settings, _ = read_model_settings(repository / model)
    return settings.get("quality")


def _open_state(settings: Settings) -> tuple[StateStore, EventLog]:
    store = StateStore(settings.state_path)
    events = EventLog(settings.state_path, max_bytes=max(1, int(settings.events_max_mb * MIB)),
                      keep=settings.events_keep)
    try:
        store.open()
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise ConfigError(f"state directory {settings.state_path}: {exc.strerror}") from exc
        # Serving matters more than saving: commands will answer UNAVAILABLE
        # (nothing changed) until space is freed.
        log.error("state directory is full: serving, but no change can be saved until"
                  " space is freed", extra={"state_dir": str(settings.state_path)})
    try:
        events.open(seq_floor=store.peek_last_seq())
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise ConfigError(f"state directory {settings.state_path}: {exc.strerror}") from exc
        log.error("state directory is full: the event log cannot even be created; events"
                  " are kept in memory only", extra={"state_dir": str(settings.state_path)})
    return store, events


class WatchTask:
    """The repository watcher running beside the servers."""

    def __init__(self, watcher: RepositoryWatcher) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(watcher.run(self._stop), name="watcher")

    async def stop(self) -> None:
        self._stop.set()
        await self._task


def _start_watcher(settings: Settings, manager: ModelManager, guard: Guard
                   ) -> WatchTask | None:
    if not settings.watch:
        return None
    sync = RepositorySync(manager, settings.model_repository,
                          default_policy=settings.watch_policy,
                          on_model=guard.reload_changed)
    watcher = RepositoryWatcher(
        settings.model_repository, sync.apply, settle_s=settings.watch_settle_ms / 1000,
        poll=settings.watch_poll, poll_interval_ms=settings.watch_poll_ms)
    return WatchTask(watcher)


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the sidecar until `stop` is set or SIGTERM/SIGINT arrives."""
    check(settings)
    # Fail on an unusable address before anything is created (state dir included).
    for flag, address in (("--listen", settings.listen),
                          ("--control-listen", settings.control_listen),
                          ("--metrics-listen", settings.metrics_listen)):
        if address:
            try:
                check_bindable(address)
            except BindError as exc:
                raise BindError(f"{exc} (set {flag} to move it)") from exc
    config = session_config(settings)
    token = _token(settings)
    data_credentials = _credentials(settings.tls_cert, settings.tls_key)
    control_credentials = _credentials(settings.control_tls_cert, settings.control_tls_key,
                                       settings.control_tls_client_ca)
    stop = stop or asyncio.Event()
    store, events = _open_state(settings)
    pool = ThreadPoolExecutor(settings.effective_inference_threads, thread_name_prefix="infer")
    repo = settings.model_repository
    manager = ModelManager(
        settings.model_repository, config, store=store, events=events,
        warm_versions=settings.warm_versions, load_threads=settings.load_threads,
        max_loaded=settings.max_loaded, crash_window_s=settings.crash_window_s,
        crash_limit=settings.crash_limit,
        batching=BatcherFactory(repo, settings.default_batching, pool,
                                settings.effective_inference_threads),
    )
    guard = Guard(manager, defaults=GuardSettings(enabled=settings.guard),
                  settings_source=lambda model: _guard_file_settings(repo, model))
    mirror = ShadowMirror(manager, guard, inline_max_us=settings.inline_max_us)
    quality = QualityEngine(manager, guard, mirror,
                            source=lambda model: _quality_file_settings(repo, model),
                            max_ids=settings.feedback_max_ids,
                            max_age_s=settings.feedback_max_age_s)
    plane = DataPlane(manager, pool, inline_max_us=settings.inline_max_us,
                      strict_readiness=settings.strict_readiness,
                      nonfinite=guard.nonfinite_check, mirror=mirror, quality=quality)
    feedback = FeedbackPlane(quality)
    control_plane = ControlPlane(manager, state_dir=settings.state_path, ready=plane.ready,
                                 guard=guard, mirror=mirror)
    options = config.describe()
    outcomes: dict[tuple[str, str], int] = {}
    inference = build_inference_server(
        plane, listen=settings.listen, max_message_bytes=settings.max_message_bytes,
        max_concurrent_rpcs=settings.max_concurrent_rpcs, session_options=options,
        credentials=data_credentials, outcomes=outcomes, access_log=settings.access_log,
        feedback=feedback)
    control = build_control_server(
        plane, control_plane, listen=settings.control_listen,
        max_message_bytes=settings.max_message_bytes, session_options=options, token=token,
        credentials=control_credentials, outcomes=outcomes, feedback=feedback)
    fleet = None
    if settings.fleet_etcd:
        fleet = FleetLink(manager, etcd_options(settings),
                          fleet=settings.fleet_name, replica=settings.replica_name,
                          lease_s=settings.fleet_lease_s, on_guard=guard.reload)
    collector = metrics.SidecarCollector(manager, outcomes, events, guard, mirror,
                                         quality=quality, fleet=fleet)
    listeners = (inference, control)

    async def set_server_health(ready: bool) -> None:
        for listener in listeners:
            await listener.set_health("", ready)

    async def on_model_change(model: str, ready: bool) -> None:
        for listener in listeners:
            await listener.set_health(model, ready)
        if manager.started:
            await set_server_health(plane.ready())

    manager.add_listener(on_model_change)
    loop = asyncio.get_running_loop()
    # SIGTERM/SIGINT: the first one stops; later ones are logged and ignored, and
    # at the end of the shutdown both are left ignored until the process is gone.
    # Not loop.add_signal_handler: asyncio restores SIG_DFL when its handlers are
    # removed or the loop closes, and a repeated SIGTERM in the last moments killed
    # the process with signal 15. A plain handler, woken through a pipe as asyncio
    # does it (a signal may land on another thread), never leaves SIG_DFL behind.
    def on_signal_in_loop(sig: signal.Signals) -> None:
        if stop.is_set():
            log.info("signal ignored", extra={"signal": sig.name, "reason": "already stopping"})
        stop.set()

    def on_signal(signum: int, _: Any) -> None:  # main thread, between two bytecodes
        try:
            loop.call_soon_threadsafe(on_signal_in_loop, signal.Signals(signum))
        except RuntimeError:  # the loop is closed
            pass

    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    loop.add_reader(wake_read, os.read, wake_read, 512)
    previous_wakeup = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    addresses = {"address": inference.address, "control_address": control.address}
    watching: WatchTask | None = None
    metrics_server: asyncio.Server | None = None
    try:
        for listener in listeners:
            await listener.server.start()
        if settings.metrics_listen:
            metrics_server = await metrics.serve(settings.metrics_listen,
                                                 metrics.registry(collector))
            port = metrics_server.sockets[0].getsockname()[1]
            addresses["metrics_address"] = (
                f"{settings.metrics_listen.rsplit(':', 1)[0]}:{port}")
        await set_server_health(False)
        log.info("listening", extra={**addresses, "control_auth": bool(token),
                                     "state_dir": str(settings.state_path)})
        adopt = await fleet.adopt() if fleet is not None else None
        await manager.start(adopt)
        if fleet is not None:  # before the watcher and the guard act: through the fleet
            fleet.start(address=inference.address, control_address=control.address)
            control_plane.fleet = fleet
        guard.start()
        quality.start()
        mirror.start()
        watching = _start_watcher(settings, manager, guard)
        await set_server_health(plane.ready())
        served = sorted(e.name for e in manager.entries() if e.serving.active is not None)
        # What start-up made lives as long as the process: out of the collector's
        # sight, so its full collections (triggered by the request path's short-
        # lived objects) do not walk it again and again.
        gc.freeze()
        log.info("serving", extra={**addresses, "models": served, "ready": plane.ready()})
        if settings.log_format == "text":  # for people: how to reach the control address
            log.info(f"control it with: {ctl_hint(settings, control.address, token)}")
        await stop.wait()
        log.info("stopping", extra={"grace_s": settings.grace_s})
    finally:
        # Not ready at once (a watcher still loading a version must not hold that up),
        # then stop the watcher.
        plane.stopping = True
        for listener in listeners:
            await listener.health.enter_graceful_shutdown()
        if watching is not None:
            await watching.stop()
        if metrics_server is not None:
            metrics_server.close()
        events.end_followers()  # event streams would otherwise hold the grace period
        await asyncio.gather(*(lst.server.stop(settings.grace_s) for lst in listeners))
        if fleet is not None:
            await fleet.close()  # leaves the fleet: peers see it at once
        await mirror.close()
        await guard.close()
        await manager.close(settings.grace_s)
        pool.shutdown(wait=True, cancel_futures=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # one step: no moment with SIG_DFL
        signal.set_wakeup_fd(previous_wakeup)
        loop.remove_reader(wake_read)
        os.close(wake_read)
        os.close(wake_write)
        log.info("stopped")
