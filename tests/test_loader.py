"""The loader, in process: digest, signature, warm-up, and a reason for every bad file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import make_models
import numpy as np
import pytest

from sidecar.errors import ModelExecutionError, ModelLoadError
from sidecar.loader.onnx import SessionConfig, file_identity, load

CONFIG = SessionConfig()


def test_load_reads_identity_signature_and_runs(tmp_path: Path) -> None:
    """A good file loads with its sha256, size, signature (-1 for dynamic dims) and runs."""
    path = make_models.write_model(make_models.tiny_model(1), tmp_path, "tiny", 1)
    loaded = load(path, CONFIG)
    assert loaded.identity.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.identity.size == path.stat().st_size
    assert [(t.name, t.datatype, t.shape) for t in loaded.signature.inputs] == [
        ("INPUT0", "FP32", (-1, 4))]
    assert loaded.signature.inputs[0].symbols == ("batch", None)
    x = np.ones((2, 4), np.float32)
    w, b = make_models.tiny_weights(1)
    (out,) = loaded.runner.run({"INPUT0": x})
    np.testing.assert_allclose(out, x @ w + b, rtol=1e-5)


def test_digest_is_streamed_in_chunks_across_a_large_file(tmp_path: Path) -> None:
    """The digest of a file larger than one read chunk equals hashlib's of the whole."""
    path = tmp_path / "big.bin"
    path.write_bytes(np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17))
    assert file_identity(path).digest == hashlib.sha256(path.read_bytes()).hexdigest()


def _expect_failure(path: Path, needle: str) -> str:
    with pytest.raises(ModelLoadError) as err:
        load(path, CONFIG)
    reason = str(err.value)
    assert needle in reason and "\n" not in reason
    return reason


def test_missing_model_file(tmp_path: Path) -> None:
    """A version folder without model.onnx fails with that reason."""
    (tmp_path / "m" / "1").mkdir(parents=True)
    _expect_failure(tmp_path / "m" / "1" / "model.onnx", "no model.onnx")


def test_empty_file(tmp_path: Path) -> None:
    """A zero-byte model file fails as empty."""
    path = tmp_path / "model.onnx"
    path.write_bytes(b"")
    _expect_failure(path, "empty")


def test_not_onnx(tmp_path: Path) -> None:
    """A file that is not ONNX fails with onnxruntime's reason."""
    path = tmp_path / "model.onnx"
    path.write_bytes(b"this is not a model\n" * 10)
    _expect_failure(path, "onnxruntime cannot load")


def test_truncated_file(tmp_path: Path) -> None:
    """A half-written model file fails."""
    full = make_models.write_model(make_models.dense_model(width=64, hidden=64), tmp_path, "d", 1)
    data = full.read_bytes()
    full.write_bytes(data[: len(data) // 2])
    _expect_failure(full, "onnxruntime cannot load")


def test_model_file_is_a_directory(tmp_path: Path) -> None:
    """model.onnx that is a directory fails as not a regular file."""
    (tmp_path / "model.onnx").mkdir()
    _expect_failure(tmp_path / "model.onnx", "not a regular file")


def test_unsupported_operator(tmp_path: Path) -> None:
    """An operator onnxruntime lacks fails at session creation, naming it."""
    path = make_models.write_model(make_models.unsupported_op_model(), tmp_path, "u", 1)
    _expect_failure(path, "NoSuchOp")


def test_warm_up_failure(tmp_path: Path) -> None:
    """A model that loads but cannot run fails at warm-up, never reaching READY."""
    path = make_models.write_model(make_models.warmup_fails_model(), tmp_path, "w", 1)
    _expect_failure(path, "warm-up inference failed")


def test_runtime_error_is_a_model_execution_error(tmp_path: Path) -> None:
    """An onnxruntime error while running is the model's failure (ModelExecutionError)."""
    path = make_models.write_model(make_models.tiny_model(1), tmp_path, "tiny", 1)
    runner = load(path, CONFIG).runner
    with pytest.raises(ModelExecutionError):
        runner.run({"INPUT0": np.ones((1, 5), np.float32)})


def test_unknown_provider_is_refused() -> None:
    """An execution provider this onnxruntime lacks is refused at start."""
    with pytest.raises(ValueError, match="NoSuchExecutionProvider"):
        SessionConfig(providers=("NoSuchExecutionProvider",)).check()
