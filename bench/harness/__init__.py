"""The one harness every benchmark script in bench/ is built on.

- `machine`: what the machine is and how busy it is (/proc), noise handling;
- `server`: the sidecar and the minimal baseline as subprocesses, the sidecar's
  control plane, model repositories;
- `clients`: the one load generator (client worker processes, per-call records);
- `stats`: figures of a measured window, medians, ratios, rounds, tables.

Importing it puts examples/ (make_models.py, the project's one source of
generated models, re-exported as `models`) and tests/ (serverlog.py, the one
reader of the server's JSON log) on sys.path, as pytest's `pythonpath` does.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for _dir in (ROOT / "examples", ROOT / "tests"):
    if str(_dir) not in sys.path:
        sys.path.append(str(_dir))

import make_models as models  # noqa: E402

__all__ = ["ROOT", "models"]
