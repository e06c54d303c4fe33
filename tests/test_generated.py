"""Generated artefacts match their sources: protobuf code and example models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_protobuf_code_is_up_to_date() -> None:
    """Regenerating from proto/ gives exactly the committed code."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_example_models_are_regenerated_byte_for_byte() -> None:
    """examples/make_models.py writes exactly the committed example models."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "make_models.py"),
                             "--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_quality_example_models_are_regenerated_byte_for_byte() -> None:
    """examples/quality/make_classifier.py writes exactly the committed classifier
    files (version 1 in its repository, the worse and the equal candidates)."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quality" /
                                                 "make_classifier.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
