"""Random interleavings of every command that changes a model, over many seeds.

tests/test_core.py runs one fixed seed in the suite; this script runs many (a
fresh manager, real onnxruntime sessions and real files per seed), with a
request held across each round and a probe request on every event-loop tick,
and checks after every round that each version in the serving state is READY
with an open session and answers (tests/interleave.py). It prints how many
seeds, rounds and commands ran, how many violated the invariant (with the
first failure of each), and the commands per second.

    python bench/races.py [--seeds N] [--first SEED] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time

import interleave  # tests/interleave.py, on sys.path through the harness
from harness import models
from harness.server import scratch

from sidecar.loader.onnx import SessionConfig
from sidecar.manager.manager import ModelManager
from sidecar.state.events import EventLog
from sidecar.state.store import StateStore


async def one_seed(seed: int, rounds: int) -> str:
    """'' if every round held the invariant, else the first failure."""
    with scratch("interleave-") as root:
        for v in (1, 2, 3, 4):
            models.write_model(models.tiny_model(v), root / "repo", "tiny", v)
        store, events = StateStore(root / "state"), EventLog(root / "state")
        store.open()
        events.open()
        manager = ModelManager(root / "repo", SessionConfig(), store=store, events=events,
                               max_loaded=3)
        await manager.start()
        try:
            await interleave.rounds(manager, random.Random(seed), rounds, 30.0)
        except AssertionError as exc:
            return str(exc).splitlines()[0][:300]
        finally:
            await manager.close(grace=5.0)
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200, help="seeds to run (default 200)")
    parser.add_argument("--first", type=int, default=1, help="first seed (default 1)")
    parser.add_argument("--rounds", type=int, default=30, help="rounds per seed (default 30)")
    parser.add_argument("--quick", action="store_true", help="10 seeds")
    args = parser.parse_args()
    seeds = range(args.first, args.first + (10 if args.quick else args.seeds))
    failed: dict[int, str] = {}
    start = time.perf_counter()
    for seed in seeds:
        problem = asyncio.run(one_seed(seed, args.rounds))
        if problem:
            failed[seed] = problem
            print(f"seed {seed}: {problem}", flush=True)
    elapsed = time.perf_counter() - start
    commands = len(seeds) * args.rounds * 4  # 2-6 per round: 4 on average
    print(f"{len(seeds)} seeds x {args.rounds} rounds (~{commands} commands) in"
          f" {elapsed:.1f} s (~{commands / elapsed:.0f} commands/s):"
          f" {len(failed)} seed(s) broke the invariant")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
