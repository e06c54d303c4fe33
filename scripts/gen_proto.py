"""Regenerate the committed gRPC/protobuf code from proto/.

Run `python scripts/gen_proto.py` after editing a .proto; `--check` regenerates
into a temporary tree and exits 1 if the committed code differs (CI and the test
suite run it), so generated code never drifts from its source.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
# Each folder of proto/ that holds .proto files, and the package its code lands in
# (the same path): the data and control planes, and the etcd client's own subset.
PACKAGE_DIRS = (Path("sidecar/rpc/proto"), Path("sidecar/fleet/proto"))


def generate(out_root: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on every .proto, writing under out_root."""
    from grpc_tools import protoc  # imported late: only this script needs it

    protos = sorted(p for d in PACKAGE_DIRS for p in (PROTO_ROOT / d).glob("*.proto"))
    for package_dir in PACKAGE_DIRS:
        (out_root / package_dir).mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for d in PACKAGE_DIRS for p in (out_root / d).iterdir()
                  if p.suffix in {".py", ".pyi"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code differs")
    args = parser.parse_args()
    if not args.check:
        for path in generate(ROOT):
            print(path.relative_to(ROOT))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = [p.relative_to(tmp) for p in generate(Path(tmp))]
        stale = [
            str(p) for p in fresh
            if not (ROOT / p).exists()
            or not filecmp.cmp(Path(tmp) / p, ROOT / p, shallow=False)
        ]
    if stale:
        print(f"generated code is stale: {', '.join(stale)}; run scripts/gen_proto.py",
              file=sys.stderr)
        return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
