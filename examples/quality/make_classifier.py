"""Build the quality example's classifier files (see client.py for the walkthrough).

Writes, next to this script:

- ``models/classifier/1/model.onnx``: the good version (``classifier_model("good")``,
  about 90.5 % accurate), the example repository's only version; ``sidecar.json``
  beside it is written by hand, not here;
- ``classifier-worse.onnx``: the worse one (never predicts class 3, about 71.4 %),
  published as version 2 during the walkthrough;
- ``classifier-equal.onnx``: as accurate as the good one, with other errors (for
  trying a version the quality rule must leave alone).

The models come from ``examples/make_models.py`` (pinned versions and seeds: the
same bytes every time); ``--check`` writes nothing and exits 1 if a committed file
differs from a fresh build.

    python examples/quality/make_classifier.py [--out DIR] [--check]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/: make_models

import make_models

HERE = Path(__file__).resolve().parent
MODEL = "classifier"
#: file (relative to the output folder) -> the classifier kind it holds
FILES = {f"models/{MODEL}/1/model.onnx": "good",
         "classifier-worse.onnx": "worse",
         "classifier-equal.onnx": "equal"}


def write(out: Path) -> list[Path]:
    """Write every file of FILES under `out`; return them, in order."""
    written = []
    for rel, kind in FILES.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make_models.classifier_model(kind).SerializeToString())
        written.append(path)
    return written


def check(out: Path) -> list[str]:
    """How the files under `out` differ from a fresh build (empty: identical)."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        for rel in FILES:
            fresh, there = Path(tmp) / rel, out / rel
            if not there.is_file():
                problems.append(f"missing: {there}")
            elif fresh.read_bytes() != there.read_bytes():
                problems.append(f"differs: {there}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=HERE,
                        help="folder to write into (default: this script's folder)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if --out differs from a fresh build")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.out)
        for problem in problems:
            print(problem)
        if not problems:
            print(f"{args.out}: up to date")
        return 1 if problems else 0
    for path in write(args.out):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
