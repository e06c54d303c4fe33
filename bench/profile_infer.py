"""Profile the sidecar's ModelInfer under load with py-spy (a development aid).

    python bench/profile_infer.py [--py-spy PATH] [--seconds S] [-- sidecar args]

Starts `sidecar serve` on the tiny model, loads it with 16 calls in flight from
one client process, and records py-spy's flame data (speedscope JSON and a
collapsed-stack text) of the server for S seconds. py-spy is not a dependency:
install it anywhere (`pip install py-spy` in another venv) and pass its path.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import server
from harness.clients import ClientPool, Plan, Workload


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--py-spy", default="py-spy")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/sidecar-profile"))
    parser.add_argument("--minimal", action="store_true", help="profile the minimal server")
    parser.add_argument("--native", action="store_true", help="C frames too (py-spy --native)")
    parser.add_argument("sidecar_args", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sidecar-prof-") as tmp:
        repo = server.tiny_repo(Path(tmp), versions=(1,))
        srv = (server.minimal(repo / "tiny" / "1" / "model.onnx", []) if args.minimal
               else server.Sidecar(repo, *args.sidecar_args))
        try:
            with ClientPool(Workload(model="tiny")) as pool:
                begin = time.monotonic() + 0.2
                pool.start(srv.address, Plan(begin, begin + args.seconds + 3, in_flight=16))
                time.sleep(1.5)
                mode = ["--native"] if args.native else ["--nonblocking"]
                subprocess.run([args.py_spy, "record", *mode, "-r", "1000",
                                "-d", str(int(args.seconds)), "-p", str(srv.pid), "-f", "raw",
                                "-o", str(args.out) + ".txt"], check=True)
                samples = pool.collect()
                print(f"{samples.count} calls, {samples.failed} failed")
        finally:
            srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
