"""Control-plane views and events -> `sidecar.control.v1` messages."""

from __future__ import annotations

from sidecar.fleet.link import FleetStatus
from sidecar.guard.guard import Decision, Proposal
from sidecar.handlers.control import (
    CandidateView,
    CompareView,
    GuardView,
    ModelView,
    Ref,
    StatusView,
    VersionView,
)
from sidecar.loader.onnx import OnnxMeta
from sidecar.loader.signature import TensorSpec
from sidecar.manager.entry import SwapResult
from sidecar.manager.version import ModelVersion
from sidecar.quality.engine import CompareRow, MetricFigure
from sidecar.rpc.proto import control_pb2 as pb
from sidecar.state.events import Event
from sidecar.state.store import VersionRef


def _ref(ref: Ref | None) -> pb.VersionRef:
    return pb.VersionRef(number=ref.number, digest=ref.digest) if ref else pb.VersionRef()


def _version_ref(version: ModelVersion | None) -> pb.VersionRef:
    if version is None:
        return pb.VersionRef()
    return pb.VersionRef(number=version.number, digest=version.digest)


def _specs(specs: tuple[TensorSpec, ...]) -> list[pb.TensorSpec]:
    return [pb.TensorSpec(name=t.name, datatype=t.datatype, shape=t.shape) for t in specs]


def _onnx(meta: OnnxMeta | None) -> pb.OnnxMetadata | None:
    if meta is None:
        return None
    return pb.OnnxMetadata(
        producer_name=meta.producer_name, producer_version=meta.producer_version,
        domain=meta.domain, doc_string=meta.doc_string, model_version=meta.model_version,
        graph_name=meta.graph_name, metadata_props=dict(meta.metadata_props),
        metadata_props_dropped=meta.props_dropped,
    )


def model_info(view: ModelView) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=view.name, active=_ref(view.active), previous=_ref(view.previous),
        pinned=view.pinned, ready=view.ready, loaded_versions=view.loaded_versions,
        versions_on_disk=view.versions_on_disk, canary=_ref(view.canary),
        canary_weight_percent=view.canary_weight * 100, shadow=_ref(view.shadow),
        guard_note=view.guard_note,
        note=view.note,
        declaration=pb.Declaration(serve=view.declared[0], applied=view.declared[1],
                                   conflict=view.declared[2]) if any(view.declared) else None,
    )


def guard(view: GuardView) -> pb.GuardResponse:
    return pb.GuardResponse(model=view.model, settings=view.settings,
                            overrides=view.overrides, state=view.state)


def candidate(view: CandidateView) -> pb.CandidateResponse:
    return pb.CandidateResponse(model=view.model, candidate=_ref(view.candidate),
                                kind=view.kind, figures=view.figures)


def status(view: StatusView) -> pb.StatusResponse:
    return pb.StatusResponse(
        version=view.version, ready=view.ready, uptime_s=view.uptime_s,
        warm_versions=view.warm_versions, state_dir=view.state_dir,
        models=[model_info(m) for m in view.models],
    )


def version_info(v: VersionView) -> pb.VersionInfo:
    return pb.VersionInfo(
        model=v.model, number=v.number, digest=v.digest, size=v.size, mtime=v.mtime,
        ctime=v.ctime, loaded_at=v.loaded_at, activated_at=v.activated_at, path=v.path,
        state=v.state, reason=v.reason, inputs=_specs(v.inputs), outputs=_specs(v.outputs),
        counters=pb.VersionCounters(
            requests=v.requests, errors=v.errors, p50_ms=v.p50_ms, p90_ms=v.p90_ms,
            p99_ms=v.p99_ms, inflight=v.inflight,
        ),
        quarantined=v.quarantined,
        batching=None if v.batching is None else pb.Batching(
            max_batch_size=v.batching[0], max_queue_delay_microseconds=v.batching[1],
            preferred_batch_size=v.batching[2], refused=v.batching[3],
            batches=v.batching[4]),
        created=v.created, updated=v.updated, onnx=_onnx(v.onnx),
        commit=pb.GitCommit(
            hash=v.commit.get("commit", ""), time=v.commit.get("commit_time", ""),
            subject=v.commit.get("commit_subject", ""),
            shallow=v.commit.get("commit_shallow") == "true") if v.commit else None,
    )


def swap(result: SwapResult) -> pb.SwapResponse:
    return pb.SwapResponse(
        model=result.model, from_version=_version_ref(result.from_version),
        to_version=_version_ref(result.to_version), swap_us=result.swap_ns / 1e3,
        total_ms=result.total_ns / 1e6,
    )


def event(e: Event) -> pb.Event:
    return pb.Event(
        seq=e.seq, time=e.time, model=e.model, action=e.action, actor=e.actor, reason=e.reason,
        from_version=pb.VersionRef(number=e.from_version, digest=e.from_digest),
        to_version=pb.VersionRef(number=e.to_version, digest=e.to_digest),
        details=e.details,
    )


def _figure(f: MetricFigure) -> pb.MetricFigure:
    msg = pb.MetricFigure(name=f.metric, samples=f.samples, configured=f.configured)
    if f.value is not None:
        msg.value = f.value
    if f.interval is not None:
        msg.interval.CopyFrom(pb.Interval(low=f.interval[0], high=f.interval[1]))
    return msg


def _compare_row(r: CompareRow) -> pb.CompareRow:
    msg = pb.CompareRow(
        version=r.version, role=r.role, digest=r.digest, requests=r.requests, errors=r.errors,
        error_ratio=r.error_ratio, p50_ms=r.p50_ms, p99_ms=r.p99_ms,
        metrics=[_figure(f) for f in r.metrics], matched=r.matched, mirrored=r.mirrored,
        invalid=r.invalid, reward_count=r.reward_count, reward_sum=r.reward_sum,
        paired=r.paired, agreement_rows=r.agreement_rows, favoured=r.favoured,
    )
    if r.agreement is not None:
        msg.agreement = r.agreement
    return msg


def compare(view: CompareView) -> pb.CompareResponse:
    return pb.CompareResponse(
        model=view.model, versions=[_compare_row(r) for r in view.rows],
        favoured_version=view.favoured, favour_reason=view.favour_reason, metric=view.metric,
        quality=view.quality, feedback={k: max(0, v) for k, v in view.feedback.items()},
    )


def proposal(p: Proposal) -> pb.Proposal:
    return pb.Proposal(
        id=p.id, model=p.model,
        from_version=pb.VersionRef(number=p.from_version, digest=p.from_digest),
        to_version=pb.VersionRef(number=p.to_version, digest=p.to_digest),
        rule=p.rule, reason=p.reason, evidence=p.evidence, key=p.key, time=p.time,
        approve_at=p.approve_at,
    )


def decision(d: Decision) -> pb.DecisionResponse:
    return pb.DecisionResponse(
        proposal=proposal(d.proposal), actor=d.actor, approved=d.approved,
        swap=swap(d.swap) if d.swap is not None else None, quarantined=d.quarantined,
    )


def _fleet_ref(ref: VersionRef | None) -> pb.VersionRef | None:
    return pb.VersionRef(number=ref.number, digest=ref.digest) if ref is not None else None


def fleet(view: FleetStatus) -> pb.FleetResponse:
    return pb.FleetResponse(
        fleet=view.fleet, replica=view.replica, connected=view.connected,
        members=[pb.FleetMember(
            replica=m.replica, address=m.address, control_address=m.control_address,
            started=m.started,
            models=[pb.FleetMemberModel(
                model=name, serving=pb.VersionRef(number=mm.version, digest=mm.digest)
                if mm.version else None, ready=mm.ready, error=mm.error)
                for name, mm in sorted(m.models.items())])
            for m in view.members],
        models=[pb.FleetModelState(
            model=name, active=_fleet_ref(r.active), previous=_fleet_ref(r.previous),
            pinned=r.pinned, guard=r.guard, watermark=r.watermark,
            changed_by=r.origin.describe() if r.origin.actor else "",
            changed_at=r.origin.time) for name, r in view.models],
        quarantine=[pb.FleetQuarantine(
            digest=digest, reason=q.reason, model=q.model,
            by=f"{q.origin.actor} on {q.origin.replica}" if q.origin.actor else "")
            for digest, q in view.quarantine],
        pending=view.pending, errors=dict(view.errors),
    )
