"""The data plane's choice of where a request runs, in process (real sessions)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import make_models
import numpy as np

from sidecar.handlers.dataplane import DataPlane
from sidecar.handlers.types import InferInput, InferRequest
from sidecar.loader.onnx import SessionConfig
from sidecar.manager.manager import ModelManager
from sidecar.state.events import EventLog


class CountingExecutor(ThreadPoolExecutor):
    """A real thread pool that counts what is submitted to it."""

    def __init__(self) -> None:
        super().__init__(2)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_large_requests_go_to_the_pool_even_on_a_fast_model(tmp_path: Path) -> None:
    """A batch-1 request to a fast model runs inline; a batch far larger than the
    inline budget allows goes to the pool, so the event loop never blocks on it."""
    make_models.write_model(make_models.slow_model(1, layers=8), tmp_path, "m", 1)

    async def scenario() -> None:
        manager = ModelManager(tmp_path, SessionConfig(), events=EventLog(None))
        await manager.start()
        pool = CountingExecutor()
        plane = DataPlane(manager, pool, inline_max_us=1000)

        def request(rows: int) -> InferRequest:
            x = np.ones((rows, 4), np.float32)
            return InferRequest("m", inputs=[InferInput("INPUT0", "FP32", x.shape, x)])

        await plane.infer(request(1), lambda r: r)
        assert pool.submitted == 0
        await plane.infer(request(50_000), lambda r: r)
        assert pool.submitted == 1
        pool.shutdown()
        await manager.close()

    asyncio.run(scenario())
