"""Send the example classifier requests with ids, then the truth for each, and watch
the sidecar roll a worse version back by its accuracy (docs/quality.md).

The walkthrough, from a checkout. First terminal: a sidecar serving a copy of
examples/quality/models (`classifier` version 1, and its sidecar.json with a
"quality" object), on ports 9001-9003 so that it runs beside `make run`'s:

    mkdir -p .run && cp -R examples/quality/models .run/quality
    make run MODELS=.run/quality LISTEN=127.0.0.1:9001 \\
        CONTROL_LISTEN=127.0.0.1:9002 METRICS_LISTEN=127.0.0.1:9003

Second terminal: this client. It sends 100 requests a second, each with an id of
its own and one row of 4 random features (the true class is the index of the
largest one), and the truth of each answer half a second later through
`sidecar.feedback.v1.Feedback/Send`. After 5 s it publishes
examples/quality/classifier-worse.onnx (it never predicts class 3: about 71 %
accurate, against version 1's 90 %) as version 2, the safe way (a dot folder of
the repository, then a rename); the watcher activates it; the warm version 1
answers a mirrored copy of each request, so each truth meets both versions'
answers ("paired"); after 200 paired rows the quality rule rolls version 2 back,
and the client stops:

    .venv/bin/python examples/quality/client.py --address 127.0.0.1:9001 \\
        --control 127.0.0.1:9002 --publish .run/quality

It prints a line a second (answers by version; truths matched, and paired; each
version's accuracy so far, as the client scores it) and, with --control, the
model's events as they happen; e.g. (long lines cut):

    1s classifier: 101 answers (version 1: 101); truth: 51 matched (0 paired), ...
    ...
    5s published examples/quality/classifier-worse.onnx as .run/quality/classifier/2
    ...
    #2 classifier activate 1 (139b32ea007e) -> 2 (8bb857148683) by watcher: new version
    8s classifier: rolled back: version 1 answers again after version 2 (250 answers ...
    #3 classifier rollback 2 (8bb857148683) -> 1 (139b32ea007e) by guard: quality-drop: ...
    #4 classifier quarantine - -> 2 (8bb857148683) by guard: rolled back by the ...

Then `make ctl CONTROL_LISTEN=127.0.0.1:9002 ARGS="compare classifier"` shows
both versions side by side. Variations: `make ctl CONTROL_LISTEN=127.0.0.1:9002
ARGS="guard classifier --mode propose"` first, and the guard proposes the
rollback instead (event `rollback-proposed`, `ARGS="proposals"`; the client runs
until Ctrl-C or --seconds; `ARGS="approve classifier"` rolls back). Without
--publish, publish a version yourself; examples/quality/classifier-equal.onnx is
as accurate as version 1 with other errors, and is never rolled back:

    mkdir -p .run/quality/.staging/2
    cp examples/quality/classifier-equal.onnx .run/quality/.staging/2/model.onnx
    mv .run/quality/.staging/2 .run/quality/classifier/2

A quarantined digest is never activated again; to start over:
`rm -rf .run/quality .sidecar-state/quality-*`.

Needs only what `make run` installs (the sidecar's generated stubs and numpy), not
tritonclient: the feedback stubs import the sidecar's own `inference` messages,
which tritonclient's cannot share a process with (docs/design.md).
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt

from sidecar.rpc.proto import control_pb2, control_pb2_grpc
from sidecar.rpc.proto import feedback_pb2 as fpb
from sidecar.rpc.proto import feedback_pb2_grpc as fpb_grpc
from sidecar.rpc.proto import inference_pb2 as pb
from sidecar.rpc.proto import inference_pb2_grpc as pb_grpc

HERE = Path(__file__).resolve().parent
INPUT, OUTPUT, FEATURES = "INPUT0", "SCORES", 4


@dataclass(slots=True)
class Pending:
    """An answer whose truth is due at `due` (monotonic seconds)."""

    due: float
    request_id: str
    truth: npt.NDArray[np.int64]
    version: int


@dataclass(slots=True)
class Tally:
    """Answers and their accuracy per version, and the truths sent, since a start."""

    answers: dict[int, int] = field(default_factory=dict)
    rows: dict[int, int] = field(default_factory=dict)
    correct: dict[int, int] = field(default_factory=dict)
    truths: dict[int, int] = field(default_factory=dict)  # sent, by version answered
    matched: int = 0
    paired: int = 0
    unmatched: int = 0
    failed: int = 0

    def answered(self, version: int, right: int, rows: int) -> None:
        self.answers[version] = self.answers.get(version, 0) + 1
        self.rows[version] = self.rows.get(version, 0) + rows
        self.correct[version] = self.correct.get(version, 0) + right

    def line(self, accuracy: Tally) -> str:
        """Answers and truths from this tally, accuracy so far from `accuracy`."""
        total = sum(self.answers.values())
        by = ", ".join(f"version {v}: {n}" for v, n in sorted(self.answers.items()))
        text = f"{total} answers" + (f" ({by})" if by else "")
        if self.failed:
            text += f", {self.failed} failed"
        text += (f"; truth: {self.matched} matched ({self.paired} paired),"
                 f" {self.unmatched} unmatched")
        if accuracy.rows:
            text += "; accuracy " + ", ".join(
                f"version {v} {accuracy.correct[v] / n:.3f} ({n} rows)"
                for v, n in sorted(accuracy.rows.items()))
        return text


def next_version(repo: Path, model: str) -> int:
    numbers = [int(p.name) for p in (repo / model).iterdir() if p.name.isdigit()]
    return max(numbers, default=0) + 1


def publish(repo: Path, model: str, source: Path) -> Path:
    """Write `source` as the model's next version: into a dot folder of the
    repository (the watcher ignores those), then renamed into place at once."""
    number = next_version(repo, model)
    staging = repo / ".staging" / str(number)
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "model.onnx").write_bytes(source.read_bytes())
    target = repo / model / str(number)
    os.rename(staging, target)
    return target


class Events:
    """The model's new events on the control address, as `sidecar ctl events` shows them."""

    def __init__(self, address: str, model: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = control_pb2_grpc.ModelControlStub(self._channel)
        self._model = model
        self._seq = int(self._stub.ListEvents(control_pb2.ListEventsRequest(limit=1),
                                              timeout=10).last_seq)

    def new(self) -> list[str]:
        reply = self._stub.ListEvents(control_pb2.ListEventsRequest(
            after_seq=self._seq, limit=1000, model=self._model), timeout=10)
        lines = []
        for e in reply.events:
            self._seq = max(self._seq, int(e.seq))
            lines.append(f"#{e.seq} {e.model} {e.action} {_ref(e.from_version)} ->"
                         f" {_ref(e.to_version)} by {e.actor}: {e.reason}")
        return lines

    def close(self) -> None:
        self._channel.close()


def _ref(version: control_pb2.VersionRef) -> str:
    return f"{version.number} ({version.digest[:12]})" if version.number else "-"


def shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def truth_request(model: str, item: Pending) -> fpb.FeedbackRequest:
    """The truth of one answer: an INT64 class per row, named after the output."""
    request = fpb.FeedbackRequest(model_name=model, request_id=item.request_id)
    request.truth.add(name=OUTPUT, datatype="INT64", shape=[int(item.truth.shape[0])])
    request.raw_truth_contents.append(item.truth.astype("<i8").tobytes())
    return request


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--address", default="127.0.0.1:8001",
        help="inference address HOST:PORT [default: 127.0.0.1:8001]")
    add("--control", default="",
        help="control address: print the model's events (activations, proposals,"
        " rollbacks) as they happen [default: none]")
    add("--model", default="classifier", help="model name [default: classifier]")
    add("--rate", type=float, default=100.0, help="requests per second at most [default: 100]")
    add("--rows", type=int, default=1, help="rows per request [default: 1]")
    add("--truth-delay", type=float, default=0.5,
        help="seconds from an answer to its truth; the warm previous version answers its"
        " mirrored copy meanwhile [default: 0.5]")
    add("--publish", type=Path, metavar="REPOSITORY",
        help="publish --publish-file as the model's next version in this repository")
    add("--publish-file", type=Path, default=HERE / "classifier-worse.onnx",
        help="[default: examples/quality/classifier-worse.onnx]")
    add("--publish-after", type=float, default=5.0,
        help="seconds before publishing [default: 5]")
    add("--seconds", type=float, default=0.0,
        help="stop after this long (0: at a rollback or Ctrl-C) [default: 0]")
    add("--seed", type=int, default=0, help="random seed [default: 0]")
    args = parser.parse_args(argv)
    if args.publish is not None and not (args.publish / args.model).is_dir():
        parser.error(f"{args.publish / args.model} is no model folder")

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rng = np.random.default_rng(args.seed)
    prefix = uuid.uuid4().hex[:8]  # ids unique across runs: the sidecar remembers them
    try:
        events = Events(args.control, args.model) if args.control else None
    except grpc.RpcError as exc:
        print(f"client: error: control {args.control}: {exc.code().name}: {exc.details()}",
              file=sys.stderr)
        return 1
    total, second = Tally(), Tally()
    pending: deque[Pending] = deque()
    newest, rolled = 0, ""
    with grpc.insecure_channel(args.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        infer, send = stub.ModelInfer, fpb_grpc.FeedbackStub(channel).Send
        try:
            stub.ModelMetadata(pb.ModelMetadataRequest(name=args.model), timeout=10)
        except grpc.RpcError as exc:
            print(f"client: error: {args.address} {args.model}: {exc.code().name}:"
                  f" {exc.details()}", file=sys.stderr)
            return 1
        print(f"sending {args.model} requests with ids and their truth to {args.address}"
              f" ({args.rate:g}/s, truth after {args.truth_delay:g} s; Ctrl-C stops)",
              flush=True)
        start = time.monotonic()
        end = start + args.seconds if args.seconds > 0 else float("inf")
        publish_at = start + args.publish_after if args.publish is not None else float("inf")
        next_line = start + 1.0
        for n in itertools.count():
            now = time.monotonic()
            if stop.is_set() or now >= end or rolled:
                break
            if now >= publish_at:
                publish_at = float("inf")
                target = publish(args.publish, args.model, args.publish_file)
                print(f"{now - start:.0f}s published {shown(args.publish_file)} as"
                      f" {shown(target)}", flush=True)
            x = rng.standard_normal((args.rows, FEATURES), dtype=np.float32)
            truth = np.asarray(x.argmax(axis=1), dtype=np.int64)
            request = pb.ModelInferRequest(model_name=args.model, id=f"{prefix}-{n}")
            request.inputs.add(name=INPUT, datatype="FP32", shape=list(x.shape))
            request.raw_input_contents.append(x.tobytes())
            try:
                reply = infer(request, timeout=10)
            except grpc.RpcError as exc:
                total.failed += 1
                second.failed += 1
                if total.failed == 1:
                    print(f"first failure: {exc.code().name}: {exc.details()}", flush=True)
            else:
                version = int(reply.model_version or 0)
                index = [o.name for o in reply.outputs].index(OUTPUT)
                scores = np.frombuffer(reply.raw_output_contents[index], dtype="<f4")
                right = int((scores.reshape(args.rows, -1).argmax(axis=1) == truth).sum())
                for tally in (total, second):
                    tally.answered(version, right, args.rows)
                pending.append(Pending(time.monotonic() + args.truth_delay, request.id, truth,
                                       version))
                if version < newest:
                    rolled = (f"version {version} answers again after version {newest}"
                              f" ({total.answers.get(newest, 0)} answers of version"
                              f" {newest}, {total.truths.get(newest, 0)} truths for them"
                              " sent)")
                newest = max(newest, version)
            while pending and pending[0].due <= time.monotonic():
                item = pending.popleft()
                try:
                    result = send(truth_request(args.model, item), timeout=10)
                except grpc.RpcError as exc:
                    print(f"feedback failed: {exc.code().name}: {exc.details()}",
                          file=sys.stderr)
                    return 1
                total.truths[item.version] = total.truths.get(item.version, 0) + 1
                for tally in (total, second):
                    if result.outcome == fpb.FeedbackResponse.MATCHED:
                        tally.matched += 1
                        tally.paired += int(result.paired)
                    else:
                        tally.unmatched += 1
            now = time.monotonic()
            if now >= next_line:
                print(f"{now - start:.0f}s {args.model}: {second.line(total)}", flush=True)
                for line in events.new() if events is not None else ():
                    print(line, flush=True)
                second, next_line = Tally(), next_line + 1.0
            # pace: request n goes out at start + n / rate, never in a burst
            stop.wait(max(0.0, start + (n + 1) / args.rate - time.monotonic()))
    if rolled:
        print(f"{time.monotonic() - start:.0f}s {args.model}: rolled back: {rolled}", flush=True)
    if events is not None:
        time.sleep(0.2)  # the quarantine follows the rollback
        for line in events.new():
            print(line, flush=True)
        events.close()
    print(f"total {args.model}: {total.line(total)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
