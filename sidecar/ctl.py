"""`sidecar ctl`: the control plane from a shell, for tools and people on call.

Talks to `sidecar.control.v1.ModelControl` on the control address. Output is a
readable table, or with `--json` one JSON document (one per line for
`events --follow`). Errors are one line on stderr; the exit code says what
kind (see EXIT_CODES and README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from sidecar.rpc.proto import control_pb2 as pb
from sidecar.rpc.proto import control_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = "127.0.0.1:8002"
#: The guard's modes (sidecar.guard.rules.MODES; not imported: ctl stays light).
GUARD_MODES = ("auto", "propose", "off")

#: Exit codes by gRPC status (anything else: 1).
EXIT_CODES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 2,
    grpc.StatusCode.NOT_FOUND: 3,
    grpc.StatusCode.FAILED_PRECONDITION: 4,
    grpc.StatusCode.UNAVAILABLE: 5,
    grpc.StatusCode.DEADLINE_EXCEEDED: 5,
    grpc.StatusCode.UNAUTHENTICATED: 6,
    grpc.StatusCode.PERMISSION_DENIED: 6,
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _add_global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """The options every command takes. They go before the command, or after it
    (`ctl models --json`): there they are added again with SUPPRESS defaults, so
    a command's parser sets only what was given and never hides what was given
    before the command."""
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if after_command else value

    parser.add_argument("--address",
                        default=default(os.environ.get("SIDECAR_CTL_ADDRESS", DEFAULT_ADDRESS)),
                        help="control address HOST:PORT [env SIDECAR_CTL_ADDRESS; default:"
                        f" {DEFAULT_ADDRESS}]")
    parser.add_argument("--token-file", default=default(os.environ.get("SIDECAR_CTL_TOKEN_FILE",
                                                                       "")),
                        help="file with the bearer token [env SIDECAR_CTL_TOKEN_FILE; else the"
                        " token in SIDECAR_CONTROL_TOKEN]")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print JSON for scripts")
    parser.add_argument("--timeout", type=float, default=default(60.0),
                        help="seconds to wait for an answer [default: 60]")
    parser.add_argument("--actor", default=default("cli"),
                        help="who acts, for the event log [default: cli]")
    parser.add_argument("--tls-ca", default=default(""),
                        help="PEM CA to verify the server (enables TLS)")
    parser.add_argument("--tls-cert", default=default(""),
                        help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", default=default(""), help="PEM client key (mutual TLS)")


def add_parser(sub: Any) -> None:
    ctl = sub.add_parser(
        "ctl", help="control a running sidecar (load, activate, rollback, ...)",
        description="Control a running sidecar over its control address. The options"
        " below go before or after the command.")
    _add_global_options(ctl, after_command=False)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, after_command=True)
    commands = _Commands(ctl.add_subparsers(dest="ctl_command", required=True,
                                            metavar="COMMAND"), common)
    commands.add_parser("status", help="server readiness and every model's versions")
    commands.add_parser("models", help="models with active and previous versions")
    p = commands.add_parser("versions", help="every version of a model on disk")
    p.add_argument("model")
    p = commands.add_parser("load", help="load and warm a version without activating it")
    p.add_argument("model")
    p.add_argument("version", help="version number or digest prefix (12+ hex)")
    p.add_argument("--reason", default="")
    p = commands.add_parser("activate", help="make a version active (loads it if needed)")
    p.add_argument("model")
    p.add_argument("version", nargs="?", default="",
                   help="version number or digest prefix; omitted: the highest loadable")
    p.add_argument("--expected-active", default="",
                   help="refuse unless this is the active version (number, digest, none)")
    p.add_argument("--force", action="store_true",
                   help="activate despite an incompatible signature or a quarantine")
    p.add_argument("--reason", default="")
    p = commands.add_parser("rollback", help="swap back to the previous version (instant)")
    p.add_argument("model")
    p.add_argument("--expected-active", default="")
    p.add_argument("--force", action="store_true",
                   help="roll back even to a quarantined previous version")
    p.add_argument("--reason", default="")
    p = commands.add_parser("unload", help="unload a version, or the whole model")
    p.add_argument("model")
    p.add_argument("version", nargs="?", default="")
    p.add_argument("--reason", default="")
    for name, text in (("pin", "pin the active version: only commands change it"),
                       ("unpin", "let the watcher and the guard change it again")):
        p = commands.add_parser(name, help=text)
        p.add_argument("model")
        p.add_argument("--reason", default="")
    p = commands.add_parser("guard", help="show or change a model's guard settings")
    p.add_argument("model")
    p.add_argument("set", nargs="*", metavar="KEY=VALUE",
                   help="settings to change (docs/guard.md), e.g. max_error_ratio=0.05")
    p.add_argument("--reset", action="store_true", help="drop settings set by command first")
    p.add_argument("--mode", choices=GUARD_MODES,
                   help="auto: roll back; propose: ask a person (proposals, approve,"
                   " dismiss); off: judge nothing (= mode=MODE)")
    p.add_argument("--approve-after", type=float, metavar="SECONDS",
                   help="mode propose: approve alone after this long; 0: never"
                   " (= approve_after_s=SECONDS)")
    commands.add_parser("fleet", help="fleet mode: the shared state and every live replica")
    p = commands.add_parser("compare", help="loaded versions side by side, quality included")
    p.add_argument("model")
    p = commands.add_parser("proposals", help="rollbacks the guard proposes (mode propose)")
    p.add_argument("model", nargs="?", default="", help="one model's; omitted: every model's")
    for name, text in (("approve", "carry out a model's rollback proposal (and quarantine)"),
                       ("dismiss", "keep serving; the same evidence is not proposed again")):
        p = commands.add_parser(name, help=text)
        p.add_argument("model")
        p.add_argument("--proposal", default="", metavar="ID",
                       help="refuse unless this is the proposal waiting")
        p.add_argument("--reason", default="")
    p = commands.add_parser("canary", help="send a share of requests to a candidate")
    p.add_argument("model")
    p.add_argument("version")
    p.add_argument("--weight", type=float, required=True,
                   help="percent of the requests naming no version (0-100, exclusive)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--reason", default="")
    p = commands.add_parser("shadow", help="mirror requests to a candidate and compare")
    p.add_argument("model")
    p.add_argument("version")
    p.add_argument("--force", action="store_true")
    p.add_argument("--reason", default="")
    for name, text in (("promote", "make the canary or shadow active"),
                       ("abort", "end the canary or shadow")):
        p = commands.add_parser(name, help=text)
        p.add_argument("model")
        p.add_argument("--reason", default="")
    p = commands.add_parser("quarantine", help="never let the watcher or guard activate it")
    p.add_argument("model")
    p.add_argument("version", help="version number or digest prefix")
    p.add_argument("--reason", default="")
    p = commands.add_parser("unquarantine", help="allow a quarantined digest again")
    p.add_argument("digest", help="digest prefix (12+ hex)")
    p.add_argument("--reason", default="")
    p = commands.add_parser("events", help="the event history; --follow for new events")
    p.add_argument("--model", default="")
    p.add_argument("--after", type=int, default=0, help="only events after this seq")
    count = p.add_mutually_exclusive_group()
    count.add_argument("--limit", type=_positive_int, default=100,
                       help="at most this many events, the oldest first [default: 100]")
    count.add_argument("--tail", type=_positive_int, default=0, metavar="N",
                       help="the newest N events (printed oldest first); with --follow, then"
                       " the new ones")
    p.add_argument("--follow", action="store_true", help="keep printing new events")


class _Commands:
    """`add_parser` of the commands' sub-parsers, each with the global options."""

    def __init__(self, action: Any, common: argparse.ArgumentParser) -> None:
        self._action = action
        self._common = common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._action.add_parser(
            name, parents=[self._common], **kwargs)
        return parser


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if not (args.tls_ca or args.tls_cert):
        return grpc.insecure_channel(args.address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(args.tls_ca).read_bytes() if args.tls_ca else None,
        private_key=Path(args.tls_key).read_bytes() if args.tls_key else None,
        certificate_chain=Path(args.tls_cert).read_bytes() if args.tls_cert else None,
    )
    return grpc.secure_channel(args.address, credentials)


def _dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


def _when(seconds: float) -> str:
    if not seconds:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _ref(ref: pb.VersionRef) -> str:
    return f"{ref.number} ({ref.digest[:12]})" if ref.number else "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def _candidate(m: pb.ModelInfo) -> str:
    if m.canary.number:
        return f"canary {m.canary.number} ({m.canary_weight_percent:g}%)"
    return f"shadow {m.shadow.number}" if m.shadow.number else "-"


def _models_table(models: Sequence[pb.ModelInfo]) -> str:
    rows = [["MODEL", "ACTIVE", "PREVIOUS", "CANDIDATE", "PINNED", "READY", "LOADED",
             "ON DISK"]]
    rows += [[m.name, _ref(m.active), _ref(m.previous), _candidate(m),
              "yes" if m.pinned else "no", "yes" if m.ready else "no",
              ",".join(map(str, m.loaded_versions)) or "-", str(m.versions_on_disk)]
             for m in models]
    notes = [f"{m.name}: guard: {m.guard_note}" for m in models if m.guard_note]
    notes += [f"{m.name}: {m.note}" for m in models if m.note]
    notes += [f"{m.name}: sidecar.json serve: {m.declaration.serve or '(none)'}"
              + (f"; CONFLICT: {m.declaration.conflict}" if m.declaration.conflict else "")
              for m in models if m.HasField("declaration") and (m.declaration.serve
                                                                or m.declaration.conflict)]
    return "\n".join([_table(rows), *notes])


def _short_time(iso: str) -> str:
    """An ISO 8601 time of the server ("...T04:20:06.895Z") to the second, as `_when`."""
    if not iso:
        return "-"
    return iso.split(".", 1)[0].removesuffix("Z") + "Z"


def _versions_table(versions: Sequence[pb.VersionInfo]) -> str:
    """One row per version; the ONNX metadata and the times to the millisecond
    are in --json (`created`, `updated`, `onnx`)."""
    rows = [["VERSION", "STATE", "DIGEST", "SIZE", "LOADED", "ACTIVATED", "CREATED", "UPDATED",
             "REQUESTS", "ERRORS", "P50 MS", "P99 MS", "BATCHING", "COMMIT", "REASON"]]
    for v in versions:
        c = v.counters
        rows.append([str(v.number), v.state + (" (quarantined)" if v.quarantined else ""),
                     v.digest[:12] or "-", str(v.size), _when(v.loaded_at),
                     _when(v.activated_at), _short_time(v.created), _short_time(v.updated),
                     str(c.requests), str(c.errors),
                     f"{c.p50_ms:.2f}", f"{c.p99_ms:.2f}", _batching_text(v),
                     _commit_text(v),
                     "; ".join(t for t in (v.reason, v.batching.refused) if t)])
    return _table(rows)


def _commit_text(v: pb.VersionInfo) -> str:
    """`<hash[:10]> <subject, cut>`, or "-" (not a git work tree)."""
    if not v.HasField("commit"):
        return "-"
    subject = v.commit.subject if len(v.commit.subject) <= 40 else v.commit.subject[:37] + "..."
    return f"{v.commit.hash[:10]} {subject}" + (" (shallow)" if v.commit.shallow else "")


def _batching_text(v: pb.VersionInfo) -> str:
    if not v.HasField("batching"):
        return "-"
    b = v.batching
    if not b.max_batch_size:
        return "refused"
    return f"<={b.max_batch_size} rows, {b.max_queue_delay_microseconds} us"


def _event_line(e: pb.Event) -> str:
    change = ""
    if e.from_version.number or e.to_version.number:
        change = f" {_ref(e.from_version)} -> {_ref(e.to_version)}"
    reason = f": {e.reason}" if e.reason else ""
    return f"#{e.seq} {_when(e.time)} {e.model} {e.action}{change} by {e.actor}{reason}"


def _guard_text(r: pb.GuardResponse) -> str:
    lines = [f"{r.model}: guard"]
    lines += [f"  {k} = {v}" + ("  (set by command)" if k in r.overrides else "")
              for k, v in sorted(r.settings.items())]
    lines += [f"  state {k}: {v}" for k, v in sorted(r.state.items()) if v]
    return "\n".join(lines)


def compare_json(r: pb.CompareResponse) -> dict[str, Any]:
    """`compare --json`: per version the keys of `sidecar.quality.engine.describe_row`,
    each metric under its name (`accuracy`, `recall`, ...: value, samples, interval,
    configured); numbers are JSON numbers, an unknown value null."""
    versions: list[dict[str, Any]] = []
    for v in r.versions:
        row: dict[str, Any] = {
            "version": v.version, "role": v.role, "digest": v.digest, "requests": v.requests,
            "errors": v.errors, "error_ratio": v.error_ratio, "p50_ms": v.p50_ms,
            "p99_ms": v.p99_ms, "matched": v.matched, "mirrored": v.mirrored,
            "invalid": v.invalid, "reward_count": v.reward_count, "reward_sum": v.reward_sum,
            "paired": v.paired,
            "agreement": v.agreement if v.HasField("agreement") else None,
            "agreement_rows": v.agreement_rows, "favoured": v.favoured,
            "favour_reason": r.favour_reason}
        for m in v.metrics:
            row[m.name] = {
                "value": m.value if m.HasField("value") else None, "samples": m.samples,
                "interval": [m.interval.low, m.interval.high] if m.HasField("interval")
                else None,
                "configured": m.configured}
        versions.append(row)
    return {"model": r.model, "metric": r.metric, "quality": r.quality,
            "favoured_version": r.favoured_version, "favour_reason": r.favour_reason,
            "feedback": dict(sorted(r.feedback.items())), "versions": versions}


def _figure_text(m: pb.MetricFigure | None) -> str:
    if m is None or not m.HasField("value"):
        return "-"
    interval = f" [{m.interval.low:.3g}, {m.interval.high:.3g}]" if m.HasField("interval") \
        else ""
    return f"{m.value:.4g}{interval} n={m.samples}"


#: Feedback figures on the summary line of `compare` (all of them are in --json).
_FEEDBACK_SHOWN = ("received", "matched", "unmatched", "invalid", "paired")


def _compare_text(r: pb.CompareResponse) -> str:
    """A row per loaded version, `*` on the one the evidence favours; a metric's cell
    is its value, interval and rows with truth."""
    names = [m.name for m in r.versions[0].metrics] if r.versions else []
    rows = [["", "VERSION", "ROLE", "REQUESTS", "ERRORS", "P50 MS", "P99 MS",
             *(n.upper() for n in names), "AGREEMENT"]]
    for v in r.versions:
        figures = {m.name: m for m in v.metrics}
        agreement = f"{v.agreement:.1%} of {v.agreement_rows}" if v.HasField("agreement") \
            else "-"
        rows.append(["*" if v.favoured else "", str(v.version), v.role, str(v.requests),
                     f"{v.errors} ({v.error_ratio:.1%})", f"{v.p50_ms:.2f}", f"{v.p99_ms:.2f}",
                     *(_figure_text(figures.get(n)) for n in names), agreement])
    lines = [f"{r.model}: quality {r.quality or 'off'}", _table(rows)]
    if r.favoured_version:
        lines.append(f"favoured (*): version {r.favoured_version}: {r.favour_reason}")
    else:
        lines.append(f"favoured: none: {r.favour_reason}")
    if r.metric:
        lines.append("feedback: " + ", ".join(f"{k} {r.feedback.get(k, 0)}"
                                              for k in _FEEDBACK_SHOWN))
    return "\n".join(lines)


def _fleet_text(r: pb.FleetResponse) -> str:
    """The shared state per model, then one row per live replica and model."""
    head = (f"fleet {r.fleet} (this replica: {r.replica}, "
            f"{'connected' if r.connected else 'NOT CONNECTED to etcd'}"
            + (f", {r.pending} decision(s) not yet published" if r.pending else "") + ")")
    shared = [["MODEL", "ACTIVE", "PREVIOUS", "PINNED", "CHANGED"]]
    shared += [[m.model, _ref(m.active), _ref(m.previous), "yes" if m.pinned else "no",
                f"{_when(m.changed_at)} {m.changed_by}".strip()] for m in r.models]
    replicas = [["REPLICA", "MODEL", "SERVING", "READY", "FOLLOWS"]]
    for member in r.members:
        for m in member.models:
            replicas.append([member.replica, m.model, _ref(m.serving),
                             "yes" if m.ready else "no", m.error or "yes"])
    lines = [head, _table(shared), "", _table(replicas)]
    if r.quarantine:
        lines += ["", "quarantined: " + ", ".join(f"{q.digest[:12]} ({q.reason})"
                                                  for q in r.quarantine)]
    return "\n".join(lines)


def _proposals_table(proposals: Sequence[pb.Proposal]) -> str:
    if not proposals:
        return "no proposals waiting"
    rows = [["MODEL", "PROPOSAL", "ROLLBACK", "RULE", "PROPOSED", "APPROVE AT", "REASON"]]
    rows += [[p.model, p.id, f"{_ref(p.from_version)} -> {_ref(p.to_version)}", p.rule,
              _when(p.time), _when(p.approve_at), p.reason] for p in proposals]
    return _table(rows)


def _decision_line(r: pb.DecisionResponse) -> str:
    p = r.proposal
    if r.approved:
        return (f"{_swap_line(r.swap)}; approved proposal {p.id} ({p.rule}) by {r.actor};"
                f" quarantined {r.quarantined[:12]}")
    return (f"{p.model}: dismissed proposal {p.id} ({p.rule}) by {r.actor};"
            f" {_ref(p.from_version)} serves on")


class UsageError(Exception):
    """A command line that parses but cannot be sent."""


def _swap_line(r: pb.SwapResponse) -> str:
    if r.from_version.number == r.to_version.number and r.from_version.digest == \
            r.to_version.digest:
        return f"{r.model}: {_ref(r.to_version)} is already active (nothing changed)"
    return (f"{r.model}: {_ref(r.from_version)} -> {_ref(r.to_version)}"
            f" (swap {r.swap_us:.1f} us, {r.total_ms:.1f} ms in all)")


class Caller:
    """Unary calls with the command's timeout and credentials."""

    def __init__(self, timeout: float, metadata: tuple[tuple[str, str], ...]) -> None:
        self.timeout = timeout
        self.metadata = metadata

    def __call__(self, method: Any, request: Message) -> Any:
        return method(request, timeout=self.timeout, metadata=self.metadata)


def _run(args: argparse.Namespace, stub: pb_grpc.ModelControlStub, call: Caller) -> None:
    command, out = args.ctl_command, print
    if command == "status":
        r = call(stub.Status, pb.StatusRequest())
        out(json.dumps(_dict(r)) if args.json else
            f"sidecar {r.version}  {'ready' if r.ready else 'NOT READY'}  up {r.uptime_s:.0f}s"
            f"  warm-versions {r.warm_versions}  state {r.state_dir}\n"
            + (_models_table(r.models) if r.models else "no models"))
    elif command == "models":
        r = call(stub.ListModels, pb.ListModelsRequest())
        out(json.dumps(_dict(r)) if args.json else
            _models_table(r.models) if r.models else "no models")
    elif command == "versions":
        r = call(stub.ListVersions, pb.ListVersionsRequest(model=args.model))
        out(json.dumps(_dict(r)) if args.json else _versions_table(r.versions))
    elif command == "load":
        r = call(stub.Load, pb.LoadRequest(model=args.model, version=args.version,
                                           actor=args.actor, reason=args.reason))
        out(json.dumps(_dict(r)) if args.json else
            f"{args.model}: version {r.version.number} ({r.version.digest[:12]}) {r.version.state}")
    elif command in {"activate", "rollback"}:
        if command == "activate":
            r = call(stub.Activate, pb.ActivateRequest(
                model=args.model, version=args.version, expected_active=args.expected_active,
                force=args.force, actor=args.actor, reason=args.reason))
        else:
            r = call(stub.Rollback, pb.RollbackRequest(
                model=args.model, expected_active=args.expected_active, force=args.force,
                actor=args.actor, reason=args.reason))
        out(json.dumps(_dict(r)) if args.json else _swap_line(r))
    elif command == "unload":
        call(stub.Unload, pb.UnloadRequest(model=args.model, version=args.version,
                                           actor=args.actor, reason=args.reason))
        what = f"version {args.version}" if args.version else "every version"
        out(json.dumps({"model": args.model, "unloaded": args.version or "all"}) if args.json
            else f"{args.model}: {what} unloaded")
    elif command in {"pin", "unpin"}:
        method = stub.Pin if command == "pin" else stub.Unpin
        r = call(method, pb.PinRequest(model=args.model, actor=args.actor, reason=args.reason))
        out(json.dumps({"model": args.model, "pinned": r.pinned}) if args.json else
            f"{args.model}: {'pinned' if r.pinned else 'unpinned'}")
    elif command == "guard":
        changes = dict(item.split("=", 1) for item in args.set if "=" in item)
        bad = [item for item in args.set if "=" not in item]
        if bad:
            raise UsageError(f"expected KEY=VALUE, got {' '.join(bad)}")
        for key, given, option in (("mode", args.mode, "--mode"),
                                   ("approve_after_s", args.approve_after, "--approve-after")):
            if given is None:
                continue
            if key in changes:
                raise UsageError(f"{option} and {key}=... both given; use one")
            changes[key] = given if isinstance(given, str) else repr(given)
        if changes or args.reset:
            r = call(stub.SetGuard, pb.SetGuardRequest(model=args.model, settings=changes,
                                                       reset=args.reset, actor=args.actor))
        else:
            r = call(stub.GetGuard, pb.GetGuardRequest(model=args.model))
        out(json.dumps(_dict(r)) if args.json else _guard_text(r))
    elif command in {"canary", "shadow"}:
        if command == "canary":
            r = call(stub.Canary, pb.CanaryRequest(
                model=args.model, version=args.version, weight_percent=args.weight,
                force=args.force, actor=args.actor, reason=args.reason))
        else:
            r = call(stub.Shadow, pb.ShadowRequest(model=args.model, version=args.version,
                                                   force=args.force, actor=args.actor,
                                                   reason=args.reason))
        out(json.dumps(_dict(r)) if args.json else
            f"{r.model}: {r.kind} {_ref(r.candidate)}")
    elif command == "promote":
        r = call(stub.Promote, pb.CandidateCommand(model=args.model, actor=args.actor,
                                                   reason=args.reason))
        out(json.dumps(_dict(r)) if args.json else _swap_line(r))
    elif command == "abort":
        r = call(stub.Abort, pb.CandidateCommand(model=args.model, actor=args.actor,
                                                 reason=args.reason))
        figures = " ".join(f"{k}={v}" for k, v in sorted(r.figures.items()))
        out(json.dumps(_dict(r)) if args.json else
            f"{r.model}: {r.kind} {_ref(r.candidate)} ended {figures}".rstrip())
    elif command in {"quarantine", "unquarantine"}:
        if command == "quarantine":
            r = call(stub.Quarantine, pb.QuarantineRequest(
                model=args.model, version=args.version, actor=args.actor, reason=args.reason))
        else:
            r = call(stub.Unquarantine, pb.QuarantineRequest(
                version=args.digest, actor=args.actor, reason=args.reason))
        out(json.dumps(_dict(r)) if args.json else
            f"{command}d {r.digest[:12]}; quarantined now: "
            + (", ".join(d[:12] for d in sorted(r.quarantine)) or "none"))
    elif command == "compare":
        r = call(stub.Compare, pb.CompareRequest(model=args.model))
        out(json.dumps(compare_json(r)) if args.json else _compare_text(r))
    elif command == "fleet":
        r = call(stub.Fleet, pb.FleetRequest())
        out(json.dumps(_dict(r)) if args.json else _fleet_text(r))
    elif command == "proposals":
        r = call(stub.ListProposals, pb.ListProposalsRequest(model=args.model))
        out(json.dumps(_dict(r)) if args.json else _proposals_table(r.proposals))
    elif command in {"approve", "dismiss"}:
        method = stub.Approve if command == "approve" else stub.Dismiss
        kind = pb.ApproveRequest if command == "approve" else pb.DismissRequest
        r = call(method, kind(model=args.model, actor=args.actor, reason=args.reason,
                              proposal_id=args.proposal))
        out(json.dumps(_dict(r)) if args.json else _decision_line(r))
    elif command == "events":
        _events(args, stub, call)


#: Events asked for per ListEvents call (the server's most).
_PAGE = 1000


def _events_between(stub: pb_grpc.ModelControlStub, call: Caller, model: str, after: int,
                    last: int) -> list[pb.Event]:
    """Every event with after < seq <= last (of `model`, if set), oldest first."""
    events: list[pb.Event] = []
    while after < last:
        page = call(stub.ListEvents, pb.ListEventsRequest(after_seq=after, limit=_PAGE,
                                                          model=model)).events
        if not page:
            break
        events += [e for e in page if e.seq <= last]
        after = page[-1].seq
    return events


def _tail(stub: pb_grpc.ModelControlStub, call: Caller, *, model: str, after: int, count: int
          ) -> tuple[list[pb.Event], int]:
    """The newest `count` events after `after` (oldest first), and the newest seq now.

    Reads back from the end in growing spans, so the newest events of a long log
    cost a few pages, not the whole history."""
    newest = call(stub.ListEvents, pb.ListEventsRequest(after_seq=2**63 - 1, limit=1,
                                                        model=model)).last_seq
    span = count
    while True:
        start = max(after, newest - span)
        events = _events_between(stub, call, model, start, newest)
        if len(events) >= count or start <= after:
            return events[-count:], newest
        span *= 8


def _stop_now(signum: int, frame: Any) -> None:
    """Ctrl-C while following events: leave at once, exit code 0. Installed
    explicitly: a process started with SIGINT ignored (from a shell's background job
    without job control, as some CI runners start it) gets no KeyboardInterrupt from
    Python, and a `tail -f` must never hang on Ctrl-C."""
    sys.stdout.flush()
    os._exit(0)


def _events(args: argparse.Namespace, stub: pb_grpc.ModelControlStub, call: Caller) -> None:
    if args.follow:
        signal.signal(signal.SIGINT, _stop_now)
    after = args.after
    if args.tail:
        events, newest = _tail(stub, call, model=args.model, after=after, count=args.tail)
        if args.json and not args.follow:
            print(json.dumps(_dict(pb.ListEventsResponse(events=events, last_seq=newest))))
        else:
            for event in events:
                print(json.dumps(_dict(event)) if args.json else _event_line(event), flush=True)
        after = max(after, newest)
    if args.follow:
        stream = stub.WatchEvents(pb.WatchEventsRequest(after_seq=after, model=args.model),
                                  metadata=call.metadata)
        for event in stream:
            print(json.dumps(_dict(event)) if args.json else _event_line(event), flush=True)
        return
    if args.tail:
        return
    r = call(stub.ListEvents, pb.ListEventsRequest(after_seq=after, limit=args.limit,
                                                   model=args.model))
    if args.json:
        print(json.dumps(_dict(r)))
    else:
        for event in r.events:
            print(_event_line(event))


def _token(args: argparse.Namespace) -> str:
    """The bearer token to send ("" for none); UsageError if the file cannot be used."""
    if args.token_file:
        path = Path(args.token_file)
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read token file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise UsageError(f"cannot read token file {path}: not text") from exc
        if not token:
            raise UsageError(f"token file {path} is empty")
        return token
    return os.environ.get("SIDECAR_CONTROL_TOKEN", "").strip()


def main(args: argparse.Namespace) -> int:
    try:
        token = _token(args)
    except UsageError as exc:
        return _fail(str(exc), 2)
    call = Caller(args.timeout, (("authorization", f"Bearer {token}"),) if token else ())
    try:
        with _channel(args) as channel:
            _run(args, pb_grpc.ModelControlStub(channel), call)
    except grpc.RpcError as exc:
        code = exc.code()
        return _fail(f"{code.name}: {exc.details()}", EXIT_CODES.get(code, 1))
    except OSError as exc:
        return _fail(f"cannot read TLS file: {exc.strerror}: {exc.filename}", 2)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:
        return 0
    return 0


def _fail(message: str, code: int) -> int:
    print(f"sidecar ctl: error: {message}", file=sys.stderr)
    return code
