"""Many clients at once: every answer correct, none failed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from conftest import ServerProcess
from helpers import client, infer_input, tiny_expected

CLIENTS = 64
REQUESTS_EACH = 20


def _client_run(address: str, seed: int) -> int:
    c = client(address)
    rng = np.random.default_rng(seed)
    for _ in range(REQUESTS_EACH):
        x = rng.standard_normal((int(rng.integers(1, 9)), 4)).astype(np.float32)
        result = c.infer("tiny", [infer_input("INPUT0", x, "FP32")], request_id=str(seed))
        response = result.get_response()
        assert response.id == str(seed) and response.model_version == "2"
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), tiny_expected(x, 2),
                                   rtol=1e-4, atol=1e-5)
    c.close()
    return REQUESTS_EACH


def test_64_concurrent_clients_get_correct_answers(server: ServerProcess) -> None:
    """64 clients, each with its own channel and inputs, all answered correctly."""
    with ThreadPoolExecutor(CLIENTS) as pool:
        done = list(pool.map(_client_run, [server.address] * CLIENTS, range(CLIENTS)))
    assert sum(done) == CLIENTS * REQUESTS_EACH


def test_pool_path_serves_concurrent_clients(start_server, standard_repo) -> None:  # type: ignore[no-untyped-def]
    """With --inline-max-us 0 every inference runs in the thread pool; still correct."""
    srv = start_server(standard_repo, "--inline-max-us", "0", "--inference-threads", "2")
    with ThreadPoolExecutor(16) as pool:
        done = list(pool.map(_client_run, [srv.address] * 16, range(16)))
    assert sum(done) == 16 * REQUESTS_EACH
