"""Per-model settings file: `<repository>/<model>/sidecar.json`.

    {"on_new_version": "activate"}     # or "load" (warm only) or "ignore"
    {"serve": 3}                       # or "sha256:<digest>" / a 12+ hex prefix

A missing file means the global default (`--watch-policy`). A file that does
not parse, or names an unknown policy, is reported and the default applies.
`serve` declares the version that serves (docs/gitops.md); a value that is
neither a version number nor a digest is reported and ignored. Unknown keys
are left for other parts (the guard reads its settings here too).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sidecar.source.repository import parse_version

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


_DIGEST = re.compile(r"[0-9a-f]{12,64}")


def read_declaration(model_dir: Path) -> tuple[str, str]:
    """(serve, problem): the normalised `serve` declaration ("" if none or invalid:
    a version number, or a lower-case sha256 digest or prefix of 12+ hex digits,
    written with or without "sha256:") and "" or what is wrong with it."""
    settings, problem = read_model_settings(model_dir)
    if problem or "serve" not in settings:
        return "", ""
    value = settings["serve"]
    text = ""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        text = str(value)
    elif isinstance(value, str):
        text = value.strip().lower().removeprefix("sha256:")
    if text and ((parse_version(text) is not None and len(text) < 12)
                 or _DIGEST.fullmatch(text)):
        return text, ""
    shown = json.dumps(value)[:80]
    return "", (f"{model_dir / POLICY_FILE}: serve must be a version number or a sha256"
                f" digest (12+ hex digits), not {shown}; ignored")
