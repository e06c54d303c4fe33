"""Build the small ONNX models used by the examples, the tests and the benchmark.

This module owns every ONNX model the project generates: the bundled example
repository under ``examples/models`` (``tiny`` versions 1 and 2, ``text`` version 1)
and the throwaway models tests and benchmarks build on the fly (dtypes, dense,
unsupported-op, warm-up-fails).

Models are built with ``onnx.helper`` from numpy weights with fixed seeds, and
every field that could vary between runs (producer, IR version, opsets) is pinned,
so the same code writes the same bytes every time; ``--check`` verifies that the
committed files still match.

Usage as a CLI::

    python examples/make_models.py [--out DIR] [--check]

Usage as a module (``examples/`` is on ``sys.path`` in tests)::

    import make_models
    model = make_models.tiny_model(1)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

# Pinned so the serialized bytes never depend on the installed onnx version's defaults.
IR_VERSION = 10
OPSET = 17
PRODUCER_NAME = "sidecar-examples"
PRODUCER_VERSION = "1"

# StringNormalizer's locale. Left unset, onnxruntime asks for "en_US.UTF-8" (Linux,
# macOS), which slim containers lack, and session creation then fails. "C" exists on
# every platform; its cost is that only ASCII letters change case.
TEXT_LOCALE = "C"

# The custom domain of unsupported_op_model; no runtime registers it.
MISSING_DOMAIN = "com.example.missing"

TINY_IN = 4
TINY_OUT = 3

# V2 datatype name -> ONNX element type, for dtypes_model. A sequence (not a set) so
# the graph's input/output order is fixed.
DTYPES: tuple[tuple[str, int], ...] = (
    ("BOOL", TensorProto.BOOL),
    ("UINT8", TensorProto.UINT8),
    ("UINT16", TensorProto.UINT16),
    ("UINT32", TensorProto.UINT32),
    ("UINT64", TensorProto.UINT64),
    ("INT8", TensorProto.INT8),
    ("INT16", TensorProto.INT16),
    ("INT32", TensorProto.INT32),
    ("INT64", TensorProto.INT64),
    ("FP16", TensorProto.FLOAT16),
    ("FP32", TensorProto.FLOAT),
    ("FP64", TensorProto.DOUBLE),
)

F32Array = npt.NDArray[np.float32]


def _finish(
    graph: onnx.GraphProto,
    *,
    extra_opsets: Sequence[tuple[str, int]] = (),
) -> onnx.ModelProto:
    """Wrap a graph in a model with every version field pinned, then check it."""
    opsets = [helper.make_opsetid("", OPSET)]
    opsets += [helper.make_opsetid(domain, version) for domain, version in extra_opsets]
    model = helper.make_model(
        graph,
        ir_version=IR_VERSION,
        opset_imports=opsets,
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _fp32_io(name: str, width: int) -> onnx.ValueInfoProto:
    """An FP32 ``[batch, width]`` graph input or output."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])


def _init(name: str, array: npt.NDArray[np.generic]) -> onnx.TensorProto:
    """A named initializer holding ``array``."""
    return numpy_helper.from_array(array, name=name)


def tiny_weights(version: int) -> tuple[F32Array, F32Array]:
    """Return ``(W, b)`` of ``tiny_model(version)``: W is [4, 3], b is [3].

    Seeded by the version so each version computes something visibly different.
    """
    rng = np.random.default_rng(seed=version)
    weight = rng.standard_normal((TINY_IN, TINY_OUT), dtype=np.float32)
    bias = rng.standard_normal(TINY_OUT, dtype=np.float32)
    return weight, bias


def tiny_model(version: int) -> onnx.ModelProto:
    """``OUTPUT0 = INPUT0 @ W + b``: FP32 [batch, 4] -> FP32 [batch, 3]."""
    weight, bias = tiny_weights(version)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["INPUT0", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["OUTPUT0"]),
        ],
        f"tiny_v{version}",
        [_fp32_io("INPUT0", TINY_IN)],
        [_fp32_io("OUTPUT0", TINY_OUT)],
        initializer=[_init("W", weight), _init("b", bias)],
    )
    return _finish(graph)


def text_model() -> onnx.ModelProto:
    """``UPPER = upper(TEXT)``: a string tensor [n] in, the same strings upper-cased out.

    ASCII letters only (see ``TEXT_LOCALE``); onnxruntime rejects an empty input (n=0).
    Only one output: no standard op returns string lengths.
    """
    graph = helper.make_graph(
        [
            helper.make_node(
                "StringNormalizer",
                ["TEXT"],
                ["UPPER"],
                case_change_action="UPPER",
                is_case_sensitive=1,
                locale=TEXT_LOCALE,
            )
        ],
        "text",
        [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("UPPER", TensorProto.STRING, ["n"])],
    )
    return _finish(graph)


def dtypes_model() -> onnx.ModelProto:
    """``OUT_<NAME> = Identity(IN_<NAME>)`` of shape [n] for every dtype in ``DTYPES``."""
    nodes = [helper.make_node("Identity", [f"IN_{name}"], [f"OUT_{name}"]) for name, _ in DTYPES]
    inputs = [helper.make_tensor_value_info(f"IN_{name}", et, ["n"]) for name, et in DTYPES]
    outputs = [helper.make_tensor_value_info(f"OUT_{name}", et, ["n"]) for name, et in DTYPES]
    return _finish(helper.make_graph(nodes, "dtypes", inputs, outputs))


def identity_model(datatype: str) -> onnx.ModelProto:
    """``OUT = Identity(IN)`` of shape [n] for one V2 datatype of ``DTYPES``."""
    element = dict(DTYPES)[datatype]
    node = helper.make_node("Identity", ["IN"], ["OUT"])
    graph = helper.make_graph(
        [node], f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("IN", element, ["n"])],
        [helper.make_tensor_value_info("OUT", element, ["n"])],
    )
    return _finish(graph)


def slow_model(version: int, layers: int = 64, width: int = 256) -> onnx.ModelProto:
    """Same signature as ``tiny`` (FP32 [batch, 4] -> [batch, 3]) but slow by
    construction: ``layers`` MatMul+Tanh layers of ``width`` in between, all sharing
    one weight so the file stays small while the compute grows.

    Deterministic heavy compute, never a sleep: each input row costs about
    layers * width^2 * 2 FLOPs, so the caller sets the time with the batch size.
    Used by tests of drain and by the guard's examples.
    """
    rng = np.random.default_rng(1000 + version)
    scale = np.float32(1.0 / np.sqrt(width))
    inits = [
        _init("W_in", rng.standard_normal((TINY_IN, width)).astype(np.float32) * scale),
        _init("W", rng.standard_normal((width, width)).astype(np.float32) * scale),
        _init("W_out", rng.standard_normal((width, TINY_OUT)).astype(np.float32)),
    ]
    nodes = [helper.make_node("MatMul", ["INPUT0", "W_in"], ["h0"])]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "W"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{layers}", "W_out"], ["OUTPUT0"]))
    graph = helper.make_graph(nodes, f"slow_v{version}", [_fp32_io("INPUT0", TINY_IN)],
                              [_fp32_io("OUTPUT0", TINY_OUT)], inits)
    return _finish(graph)


def buggy_model(version: int, layers: int = 0) -> onnx.ModelProto:
    """tiny's signature and weights, but it fails at run time for every request that
    has a row with x[:, 0] > 0: a GatherElements index, 1000 for those rows, is out
    of range. Warm-up (zeros) passes, so it loads and activates like a good model:
    the bug a guard must catch. Rows with x[:, 0] <= 0 get tiny's exact answer.

    ``layers`` > 0 makes it slow like ``slow_model``: a side branch of that many
    MatMul+Tanh layers of width 256 (about layers * 256^2 * 2 FLOPs per row),
    whose finite result is multiplied by zero and added to the output, so good rows
    still get tiny's exact answer. With ``layers`` 0 the graph is the plain one.
    """
    w, b = tiny_weights(version)
    inits = [
        _init("W", w), _init("B", b),
        _init("first", np.array([0], dtype=np.int64)),
        _init("zero", np.array(0.0, dtype=np.float32)),
        _init("far", np.array(1000, dtype=np.int64)),
        _init("nothing", np.array(0.0, dtype=np.float32)),
    ]
    nodes = [
        helper.make_node("MatMul", ["INPUT0", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["good"]),
        helper.make_node("Gather", ["INPUT0", "first"], ["x0"], axis=1),  # [batch, 1]
        helper.make_node("Greater", ["x0", "zero"], ["positive"]),
        helper.make_node("Cast", ["positive"], ["flag"], to=TensorProto.INT64),
        helper.make_node("Mul", ["flag", "far"], ["index"]),
        helper.make_node("GatherElements", ["INPUT0", "index"], ["picked"], axis=1),
        helper.make_node("Mul", ["picked", "nothing"], ["naught"]),
        helper.make_node("Add", ["good", "naught"], ["OUTPUT0" if not layers else "answer"]),
    ]
    if layers:
        # Tanh keeps every value finite, so the zero product is exactly zero.
        width = 256
        rng = np.random.default_rng(4000 + version)
        scale = np.float32(1.0 / np.sqrt(width))
        inits += [
            _init("S_in", rng.standard_normal((TINY_IN, width)).astype(np.float32) * scale),
            _init("S", rng.standard_normal((width, width)).astype(np.float32) * scale),
            _init("S_out", rng.standard_normal((width, TINY_OUT)).astype(np.float32) * scale),
        ]
        nodes.append(helper.make_node("MatMul", ["INPUT0", "S_in"], ["s0"]))
        for i in range(layers):
            nodes.append(helper.make_node("MatMul", [f"s{i}", "S"], [f"sm{i}"]))
            nodes.append(helper.make_node("Tanh", [f"sm{i}"], [f"s{i + 1}"]))
        nodes += [
            helper.make_node("MatMul", [f"s{layers}", "S_out"], ["side"]),
            helper.make_node("Mul", ["side", "nothing"], ["side_naught"]),
            helper.make_node("Add", ["answer", "side_naught"], ["OUTPUT0"]),
        ]
    graph = helper.make_graph(nodes, f"buggy_v{version}", [_fp32_io("INPUT0", TINY_IN)],
                              [_fp32_io("OUTPUT0", TINY_OUT)], inits)
    return _finish(graph)


def drifted_model(version: int, drift: float = 0.5) -> onnx.ModelProto:
    """tiny's signature with tiny(version)'s weights moved by seeded noise of scale
    `drift`: it runs fine, but its answers disagree with the good version's."""
    w, b = tiny_weights(version)
    rng = np.random.default_rng(3000 + version)
    w = (w + drift * rng.standard_normal(w.shape)).astype(np.float32)
    node_mm = helper.make_node("MatMul", ["INPUT0", "W"], ["xw"])
    node_add = helper.make_node("Add", ["xw", "B"], ["OUTPUT0"])
    graph = helper.make_graph([node_mm, node_add], f"drifted_v{version}",
                              [_fp32_io("INPUT0", TINY_IN)], [_fp32_io("OUTPUT0", TINY_OUT)],
                              [_init("W", w), _init("B", b)])
    return _finish(graph)


def large_model(version: int, megabytes: int = 100) -> onnx.ModelProto:
    """A model of about ``megabytes`` MB with tiny's signature (FP32 [batch, 4] ->
    [batch, 3]), for memory benchmarks: one square hidden weight holds the bytes.
    Written to a temporary repository by the benchmark, never committed."""
    width = int(np.sqrt(megabytes * 1024 * 1024 / 4))
    rng = np.random.default_rng(2000 + version)
    scale = np.float32(1.0 / np.sqrt(width))
    inits = [
        _init("W_in", rng.standard_normal((TINY_IN, width)).astype(np.float32)),
        _init("W", rng.standard_normal((width, width), dtype=np.float32) * scale),
        _init("W_out", rng.standard_normal((width, TINY_OUT)).astype(np.float32) * scale),
    ]
    nodes = [
        helper.make_node("MatMul", ["INPUT0", "W_in"], ["h0"]),
        helper.make_node("MatMul", ["h0", "W"], ["h1"]),
        helper.make_node("MatMul", ["h1", "W_out"], ["OUTPUT0"]),
    ]
    graph = helper.make_graph(nodes, f"large_v{version}", [_fp32_io("INPUT0", TINY_IN)],
                              [_fp32_io("OUTPUT0", TINY_OUT)], inits)
    return _finish(graph)


def dense_model(seed: int = 0, width: int = 512, hidden: int = 1024) -> onnx.ModelProto:
    """A compute-bound MLP for benchmarks: FP32 [batch, width] -> FP32 [batch, width].

    ``OUTPUT0 = relu(INPUT0 @ W1 + b1) @ W2 + b2``; about 4 MB at the defaults.
    """
    rng = np.random.default_rng(seed=seed)
    # Scaled small so activations stay finite for any sane input.
    w1 = rng.standard_normal((width, hidden), dtype=np.float32) * np.float32(0.05)
    b1 = rng.standard_normal(hidden, dtype=np.float32) * np.float32(0.05)
    w2 = rng.standard_normal((hidden, width), dtype=np.float32) * np.float32(0.05)
    b2 = rng.standard_normal(width, dtype=np.float32) * np.float32(0.05)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["INPUT0", "W1", "B1"], ["h"]),
            helper.make_node("Relu", ["h"], ["h_relu"]),
            helper.make_node("Gemm", ["h_relu", "W2", "B2"], ["OUTPUT0"]),
        ],
        f"dense_s{seed}_w{width}_h{hidden}",
        [_fp32_io("INPUT0", width)],
        [_fp32_io("OUTPUT0", width)],
        initializer=[_init("W1", w1), _init("B1", b1), _init("W2", w2), _init("B2", b2)],
    )
    return _finish(graph)


def unsupported_op_model() -> onnx.ModelProto:
    """A valid graph that onnxruntime refuses to load: its one node has no kernel.

    The op lives in a custom domain that is declared in the opset imports, so
    ``onnx.checker`` accepts it (it does not validate unknown domains), while
    ``onnxruntime.InferenceSession`` fails with "is not a registered function/op".
    """
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["INPUT0"], ["OUTPUT0"], domain=MISSING_DOMAIN)],
        "unsupported_op",
        [_fp32_io("INPUT0", TINY_IN)],
        [_fp32_io("OUTPUT0", TINY_IN)],
    )
    return _finish(graph, extra_opsets=[(MISSING_DOMAIN, 1)])


def warmup_fails_model() -> onnx.ModelProto:
    """Loads fine, fails on every run: FP32 [batch, 4] -> FP32 [batch, 1].

    Gathers column 7 of a 4-wide input. The indices are a constant but the data is
    a graph input, so nothing is folded at session creation and the bounds check
    only fires inside ``run``.
    """
    graph = helper.make_graph(
        [helper.make_node("Gather", ["INPUT0", "idx"], ["OUTPUT0"], axis=1)],
        "warmup_fails",
        [_fp32_io("INPUT0", TINY_IN)],
        [_fp32_io("OUTPUT0", 1)],
        initializer=[_init("idx", np.array([7], dtype=np.int64))],
    )
    return _finish(graph)


# The quality example's 4-class classifier (examples/quality, bench/quality.py): a row
# of 4 features drawn N(0, 1) belongs to the class of its largest feature.
CLASSES = 4
CLASSIFIER_KINDS = ("good", "worse", "equal")
_CLASSIFIER_NOISE = 0.08  # weight noise: about 90.5 % accuracy
_CLASS_SHIFT = (1, 2, 3, 0)  # "equal": features and classes renamed by this cycle


def classifier_truth(x: F32Array) -> npt.NDArray[np.int64]:
    """The true class of each row of ``x`` [rows, 4]: the index of its largest feature."""
    return np.asarray(x.argmax(axis=1), dtype=np.int64)


def classifier_weights(kind: str) -> tuple[F32Array, F32Array]:
    """``(W, b)`` of ``classifier_model(kind)``: W is [4, 4], b is [4].

    - "good": the identity plus seeded noise: right on about 90.5 % of rows of N(0, 1)
      features;
    - "worse": good's weights with a bias of -1000 on class 3, which it therefore never
      predicts: every row of class 3 (a quarter) is wrong; about 71.4 % accuracy, 19
      points lost;
    - "equal": good with features and classes renamed by one cycle (P W P^T): for
      features drawn independently from one distribution its accuracy is exactly
      good's, yet it errs on other rows (each is wrong on about 8.5 % of rows where the
      other is right): a same-quality version with independent errors.
    """
    if kind not in CLASSIFIER_KINDS:
        raise ValueError(f"kind must be one of {', '.join(CLASSIFIER_KINDS)}, not {kind!r}")
    rng = np.random.default_rng(seed=14)
    noise = rng.standard_normal((CLASSES, CLASSES), dtype=np.float32)
    weight = (np.eye(CLASSES, dtype=np.float32) + np.float32(_CLASSIFIER_NOISE) * noise)
    bias = np.zeros(CLASSES, dtype=np.float32)
    if kind == "worse":
        bias[3] = -1000.0
    elif kind == "equal":
        perm = np.eye(CLASSES, dtype=np.float32)[list(_CLASS_SHIFT)]
        weight = perm @ weight @ perm.T
    return weight.astype(np.float32), bias


def classifier_model(kind: str) -> onnx.ModelProto:
    """``SCORES = softmax(INPUT0 @ W + b)``: FP32 [batch, 4] -> FP32 [batch, 4], the
    argmax of a row its class. The file carries a doc string and metadata_props
    (``training_data``, ``author``), as a trained model's would."""
    weight, bias = classifier_weights(kind)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["INPUT0", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["SCORES"], axis=1),
        ],
        f"classifier_{kind}",
        [_fp32_io("INPUT0", CLASSES)],
        [_fp32_io("SCORES", CLASSES)],
        initializer=[_init("W", weight), _init("b", bias)],
    )
    model = _finish(graph)
    model.doc_string = f"4-class example classifier ({kind}): the class of the largest feature"
    helper.set_model_props(model, {"training_data": "synthetic-argmax-4",
                                   "author": PRODUCER_NAME, "variant": kind})
    return model


def write_model(model: onnx.ModelProto, repo: Path, name: str, version: int) -> Path:
    """Write ``model`` Triton-style to ``<repo>/<name>/<version>/model.onnx``."""
    path = repo / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def _write_examples(repo: Path) -> list[Path]:
    """Write the bundled example repository; return the files written, in order."""
    return [
        write_model(tiny_model(1), repo, "tiny", 1),
        write_model(tiny_model(2), repo, "tiny", 2),
        write_model(text_model(), repo, "text", 1),
    ]


def build_examples(repo: Path) -> None:
    """Write the bundled example repository: ``tiny`` v1 and v2, ``text`` v1."""
    _write_examples(repo)


def _files(root: Path) -> set[Path]:
    """Every file under ``root``, relative to it."""
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


def check_examples(repo: Path) -> list[str]:
    """Regenerate into a temp dir and list how ``repo`` differs (empty: identical)."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        build_examples(fresh)
        expected = _files(fresh)
        actual = _files(repo) if repo.is_dir() else set()
        for rel in sorted(expected - actual):
            problems.append(f"missing: {repo / rel}")
        for rel in sorted(actual - expected):
            problems.append(f"unexpected: {repo / rel}")
        for rel in sorted(expected & actual):
            if (fresh / rel).read_bytes() != (repo / rel).read_bytes():
                problems.append(f"differs: {repo / rel}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "models",
        help="model repository to write (default: models/ next to this script)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if --out differs from a fresh build",
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    if args.check:
        problems = check_examples(out)
        for problem in problems:
            print(problem)
        if problems:
            return 1
        print(f"{out}: up to date")
        return 0
    for path in _write_examples(out):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
