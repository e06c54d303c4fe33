"""Composition root: settings -> parts -> servers; signals; ordered shutdown.

The only module that builds and wires the parts. Startup: bind the port (so a
port in use fails fast), start serving liveness, load the models, then report
ready. Shutdown on SIGTERM/SIGINT: health NOT_SERVING at once, stop taking
calls, let in-flight calls finish within the grace period, unload, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from sidecar.handlers.dataplane import DataPlane
from sidecar.loader.onnx import SessionConfig
from sidecar.manager.manager import ModelManager
from sidecar.rpc.server import build_server
from sidecar.settings import Settings

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


def check(settings: Settings) -> None:
    repo = settings.model_repository
    if not repo.is_dir():
        what = "is not a directory" if repo.exists() else "does not exist"
        raise ConfigError(f"model repository {repo} {what}")
    if settings.max_message_mb <= 0:
        raise ConfigError("max-message-mb must be positive")


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the sidecar until `stop` is set or SIGTERM/SIGINT arrives."""
    check(settings)
    config = session_config(settings)
    stop = stop or asyncio.Event()
    manager = ModelManager(
        settings.model_repository, config, load_threads=settings.load_threads
    )
    pool = ThreadPoolExecutor(settings.effective_inference_threads, thread_name_prefix="infer")
    plane = DataPlane(
        manager,
        pool,
        inline_max_us=settings.inline_max_us,
        strict_readiness=settings.strict_readiness,
    )
    server = build_server(
        plane,
        listen=settings.listen,
        max_message_bytes=settings.max_message_bytes,
        max_concurrent_rpcs=settings.max_concurrent_rpcs,
        session_options=config.describe(),
    )

    async def on_model_change(model: str, ready: bool) -> None:
        await server.set_model_health(model, ready)
        if manager.started:
            await server.set_server_health(plane.ready())

    manager.add_listener(on_model_change)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    address = f"{settings.listen.rsplit(':', 1)[0]}:{server.port}"
    try:
        await server.server.start()
        await server.set_server_health(False)
        log.info("listening", extra={"address": address})
        await manager.start()
        await server.set_server_health(plane.ready())
        served = sorted(e.name for e in manager.entries() if e.serving.active is not None)
        log.info("serving", extra={"address": address, "models": served,
                                   "ready": plane.ready()})
        await stop.wait()
        log.info("stopping", extra={"grace_s": settings.grace_s})
    finally:
        plane.stopping = True
        await server.health.enter_graceful_shutdown()
        await server.server.stop(settings.grace_s)
        await manager.close()
        pool.shutdown(wait=True, cancel_futures=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("stopped")
