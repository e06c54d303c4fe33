"""Startup over a repository with bad versions: each fails with a reason, the
highest loadable version serves, and other models are unaffected."""

from __future__ import annotations

from pathlib import Path

import make_models
import numpy as np
from helpers import client, infer_input, status_of, tiny_expected


def _broken_repo(root: Path) -> Path:
    make_models.build_examples(root)  # tiny 1, 2 and text 1: all good
    tiny3 = make_models.write_model(make_models.tiny_model(3), root, "tiny", 3)
    tiny3.write_bytes(tiny3.read_bytes()[:40])  # half-written highest version
    (root / "tiny" / "4").mkdir()  # a version folder without model.onnx
    (root / "tiny" / "notaversion").mkdir()  # ignored: not a positive integer
    (root / "tiny" / "0").mkdir()  # ignored: versions start at 1
    make_models.write_model(make_models.unsupported_op_model(), root, "exotic", 1)
    make_models.write_model(make_models.warmup_fails_model(), root, "crashy", 1)
    empty = root / "empty" / "1"
    empty.mkdir(parents=True)
    (empty / "model.onnx").write_bytes(b"")
    (root / ".hidden").mkdir()  # ignored: dot folders (Kubernetes ..data links)
    return root


def test_bad_versions_fail_with_reasons_and_the_rest_serves(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The index shows each bad version FAILED with a one-line reason; tiny falls back
    to version 2; text still serves; the server is live but not ready (strict)."""
    srv = start_server(_broken_repo(tmp_path))
    c = client(srv.address)
    index = {(m.name, m.version): m for m in c.get_model_repository_index().models}
    assert set(index) == {("tiny", "1"), ("tiny", "2"), ("tiny", "3"), ("tiny", "4"),
                          ("text", "1"), ("exotic", "1"), ("crashy", "1"), ("empty", "1")}
    assert index[("tiny", "2")].state == "ACTIVE"
    for key, needle in [(("tiny", "3"), "cannot load"), (("tiny", "4"), "no model.onnx"),
                        (("exotic", "1"), "NoSuchOp"), (("crashy", "1"), "warm-up"),
                        (("empty", "1"), "empty")]:
        assert index[key].state == "FAILED", key
        assert needle in index[key].reason and "\n" not in index[key].reason, key
    x = np.ones((1, 4), np.float32)
    result = c.infer("tiny", [infer_input("INPUT0", x, "FP32")])
    assert result.get_response().model_version == "2"
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), tiny_expected(x, 2), rtol=1e-5)
    assert c.is_model_ready("text") and not c.is_model_ready("exotic")
    assert c.is_server_live() and not c.is_server_ready()
    code, message = status_of(lambda: c.infer("exotic", [infer_input("INPUT0", x, "FP32")]))
    assert code == "UNAVAILABLE" and "exotic" in message
    code, message = status_of(lambda: c.infer("tiny", [infer_input("INPUT0", x, "FP32")],
                                              model_version="3"))
    assert code == "UNAVAILABLE" and "FAILED" in message


def test_without_strict_readiness_the_server_is_ready(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--no-strict-readiness: ready once startup is done, even with a failed model."""
    srv = start_server(_broken_repo(tmp_path), "--no-strict-readiness")
    assert client(srv.address).is_server_ready()


def test_empty_repository_serves_nothing_but_runs(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An empty repository is not an error: the server runs with no models."""
    srv = start_server(tmp_path)
    c = client(srv.address)
    assert c.is_server_live() and c.is_server_ready()
    assert list(c.get_model_repository_index().models) == []
