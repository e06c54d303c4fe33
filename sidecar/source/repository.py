"""Scan a Triton-style model repository: `<root>/<model>/<version>/model.onnx`.

A model is a folder whose name does not start with a dot (so Kubernetes'
`..data` links and editor files are skipped); a version is a sub-folder named by
a positive integer. A version folder without `model.onnx` is still listed: the
loader then fails it with a reason, so operators see it in the index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODEL_FILE = "model.onnx"


@dataclass(frozen=True, slots=True)
class VersionOnDisk:
    model: str
    number: int
    path: Path  # the model file, which may not exist

    @property
    def directory(self) -> Path:
        return self.path.parent


def parse_version(text: str) -> int | None:
    """The version number a folder name stands for, or None."""
    if not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        return None
    number = int(text)
    return number if number > 0 else None


TEMP_SUFFIXES = (".tmp", ".part", "~", ".swp")


def is_model_name(name: str) -> bool:
    """Folders that are models: not hidden, not a copy's temporary name."""
    return bool(name) and not name.startswith(".") and not name.endswith(TEMP_SUFFIXES)


def scan_model(root: Path, name: str) -> dict[int, VersionOnDisk]:
    """Every version folder of one model, by number (empty if the model is gone)."""
    folder = root / name
    versions: dict[int, VersionOnDisk] = {}
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return versions
    for entry in entries:
        number = parse_version(entry.name)
        if number is not None and entry.is_dir():
            versions[number] = VersionOnDisk(name, number, entry / MODEL_FILE)
    return versions


def scan_repository(root: Path) -> dict[str, dict[int, VersionOnDisk]]:
    """Every model folder of the repository with its versions, by name."""
    models: dict[str, dict[int, VersionOnDisk]] = {}
    for entry in sorted(root.iterdir()):
        if is_model_name(entry.name) and entry.is_dir():
            models[entry.name] = scan_model(root, entry.name)
    return models
