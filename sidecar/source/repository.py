"""Scan a Triton-style model repository: `<root>/<model>/<version>/model.onnx`.

A model is a folder with a valid model name (see `model_name_problem`; so
Kubernetes' `..data` links and editor files are skipped); a version is a
sub-folder named by a positive integer in ASCII digits. A version folder without
`model.onnx` is still listed: the loader then fails it with a reason, so
operators see it in the index. An unreadable model folder is that model's
problem only: it is reported, and the rest of the repository is scanned.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

MODEL_FILE = "model.onnx"
log = logging.getLogger("sidecar.source")


@dataclass(frozen=True, slots=True)
class VersionOnDisk:
    model: str
    number: int
    path: Path  # the model file, which may not exist

    @property
    def directory(self) -> Path:
        return self.path.parent


#: Version numbers are positive ASCII integers of at most this many digits (an
#: int64, as the Open Inference Protocol's `version` parameter carries them).
MAX_VERSION_DIGITS = 18
#: Model names: what Triton and Kubernetes both accept as a name, and nothing that
#: could be read as a path: letters, digits, '_', '-', '.', not starting with
#: '.' or '-', at most 128 characters.
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def parse_version(text: str) -> int | None:
    """The version number a folder name or request stands for, or None: ASCII
    digits only (not '²', '①', Arabic-Indic or full-width digits), no leading
    zero, at most MAX_VERSION_DIGITS digits."""
    if (not text.isascii() or not text.isdigit() or len(text) > MAX_VERSION_DIGITS
            or text[0] == "0"):
        return None
    return int(text)


def model_name_problem(name: str) -> str:
    """Why `name` cannot be a model's name ("" if it can)."""
    if _MODEL_NAME.fullmatch(name):
        return ""
    shown = name if len(name) <= 64 else name[:64] + "..."
    return (f"'{shown}' is not a model name: 1-128 of letters, digits, '_', '-', '.',"
            " not starting with '.' or '-'")


TEMP_SUFFIXES = (".tmp", ".part", "~", ".swp")


def is_model_name(name: str) -> bool:
    """Folders that are models: a valid name, not a copy's temporary name."""
    return not model_name_problem(name) and not name.endswith(TEMP_SUFFIXES)


def scan_model(root: Path, name: str, unreadable: set[str] | None = None
               ) -> dict[int, VersionOnDisk]:
    """Every version folder of one model, by number (empty if the model is gone,
    or unreadable: then its name is added to `unreadable`)."""
    folder = root / name
    versions: dict[int, VersionOnDisk] = {}
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return versions
    except OSError as exc:  # unreadable: that model's problem only
        log.warning("model folder unreadable", extra={"model": name, "reason": str(exc)})
        if unreadable is not None:
            unreadable.add(name)
        return versions
    for entry in entries:
        number = parse_version(entry.name)
        if number is not None and entry.is_dir():
            versions[number] = VersionOnDisk(name, number, entry / MODEL_FILE)
    return versions


def scan_repository(root: Path, unreadable: set[str] | None = None
                    ) -> dict[str, dict[int, VersionOnDisk]]:
    """Every model folder of the repository with its versions, by name; the names
    of folders that cannot be read are added to `unreadable`."""
    models: dict[str, dict[int, VersionOnDisk]] = {}
    for entry in sorted(root.iterdir()):
        if is_model_name(entry.name) and entry.is_dir():
            models[entry.name] = scan_model(root, entry.name, unreadable)
    return models
