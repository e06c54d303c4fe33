"""Per-model settings file: `<repository>/<model>/sidecar.json`.

    {"on_new_version": "activate"}     # or "load" (warm only) or "ignore"

A missing file means the global default (`--watch-policy`). A file that does
not parse, or names an unknown policy, is reported and the default applies.
Unknown keys are left for other parts (the guard reads its settings here too).
"""

from __future__ import annotations

import json
from pathlib import Path

POLICY_FILE = "sidecar.json"
POLICIES = ("activate", "load", "ignore")


def read_model_settings(model_dir: Path) -> tuple[dict[str, object], str]:
    """(settings, problem): the parsed file ({} if none) and "" or what is wrong."""
    path = model_dir / POLICY_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}, ""
    except (OSError, ValueError) as exc:
        return {}, f"{path} is not valid JSON ({exc}); using defaults"
    if not isinstance(data, dict):
        return {}, f"{path} must hold a JSON object; using defaults"
    return data, ""


def read_policy(model_dir: Path, default: str) -> tuple[str, str]:
    """(policy, problem) for new versions of the model in `model_dir`."""
    settings, problem = read_model_settings(model_dir)
    value = settings.get("on_new_version", default)
    if value not in POLICIES:
        return default, (f"{model_dir / POLICY_FILE}: on_new_version must be one of"
                         f" {', '.join(POLICIES)}, not {value!r}; using {default}")
    return str(value), problem
