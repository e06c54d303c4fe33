"""Servicer of `sidecar.control.v1.ModelControl`: unpack, call the handler, pack."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from sidecar.handlers.control import ControlPlane
from sidecar.rpc import control_converters as conv
from sidecar.rpc.decoding import add_lenient, refuse_undecodable
from sidecar.rpc.errors import guarded, to_status
from sidecar.rpc.proto import control_pb2 as pb
from sidecar.rpc.proto import control_pb2_grpc as pb_grpc

Context: TypeAlias = Any  # grpc.aio.ServicerContext (grpc ships no type hints)


class ControlServicer(pb_grpc.ModelControlServicer):
    def __init__(self, control: ControlPlane) -> None:
        self._control = control

    @guarded
    async def Status(self, request: Any, context: Context) -> pb.StatusResponse:
        return conv.status(self._control.status())

    @guarded
    async def ListModels(self, request: Any, context: Context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[conv.model_info(m) for m in self._control.models()])

    @guarded
    async def ListVersions(self, request: Any, context: Context) -> pb.ListVersionsResponse:
        views = await self._control.versions(request.model)
        return pb.ListVersionsResponse(versions=[conv.version_info(v) for v in views])

    @guarded
    async def Load(self, request: Any, context: Context) -> pb.LoadResponse:
        view = await self._control.load(request.model, request.version, actor=request.actor,
                                        reason=request.reason)
        return pb.LoadResponse(version=conv.version_info(view))

    @guarded
    async def Activate(self, request: Any, context: Context) -> pb.SwapResponse:
        result = await self._control.activate(
            request.model, request.version, actor=request.actor,
            expected_active=request.expected_active, force=request.force, reason=request.reason)
        return conv.swap(result)

    @guarded
    async def Rollback(self, request: Any, context: Context) -> pb.SwapResponse:
        result = await self._control.rollback(
            request.model, actor=request.actor, expected_active=request.expected_active,
            reason=request.reason, force=request.force)
        return conv.swap(result)

    @guarded
    async def Unload(self, request: Any, context: Context) -> pb.UnloadResponse:
        await self._control.unload(request.model, request.version, actor=request.actor,
                                   reason=request.reason)
        return pb.UnloadResponse()

    @guarded
    async def Pin(self, request: Any, context: Context) -> pb.PinResponse:
        pinned = await self._control.pin(request.model, True, actor=request.actor,
                                         reason=request.reason)
        return pb.PinResponse(pinned=pinned)

    @guarded
    async def Unpin(self, request: Any, context: Context) -> pb.PinResponse:
        pinned = await self._control.pin(request.model, False, actor=request.actor,
                                         reason=request.reason)
        return pb.PinResponse(pinned=pinned)

    @guarded
    async def ListEvents(self, request: Any, context: Context) -> pb.ListEventsResponse:
        events, last = await self._control.events(after=request.after_seq,
                                                  limit=request.limit, model=request.model)
        return pb.ListEventsResponse(events=[conv.event(e) for e in events], last_seq=last)

    @guarded
    async def GetGuard(self, request: Any, context: Context) -> pb.GuardResponse:
        return conv.guard(self._control.guard_view(request.model))

    @guarded
    async def SetGuard(self, request: Any, context: Context) -> pb.GuardResponse:
        view = await self._control.set_guard(request.model, dict(request.settings),
                                             reset=request.reset, actor=request.actor)
        return conv.guard(view)

    @guarded
    async def Canary(self, request: Any, context: Context) -> pb.CandidateResponse:
        view = await self._control.start_candidate(
            request.model, request.version, kind="canary",
            weight_percent=request.weight_percent, force=request.force, actor=request.actor,
            reason=request.reason)
        return conv.candidate(view)

    @guarded
    async def Shadow(self, request: Any, context: Context) -> pb.CandidateResponse:
        view = await self._control.start_candidate(
            request.model, request.version, kind="shadow", weight_percent=0.0,
            force=request.force, actor=request.actor, reason=request.reason)
        return conv.candidate(view)

    @guarded
    async def Promote(self, request: Any, context: Context) -> pb.SwapResponse:
        result = await self._control.promote(request.model, actor=request.actor,
                                             reason=request.reason)
        return conv.swap(result)

    @guarded
    async def Abort(self, request: Any, context: Context) -> pb.CandidateResponse:
        view = await self._control.abort(request.model, actor=request.actor,
                                         reason=request.reason)
        return conv.candidate(view)

    @guarded
    async def Quarantine(self, request: Any, context: Context) -> pb.QuarantineResponse:
        digest, table = await self._control.quarantine(
            request.model, request.version, actor=request.actor, reason=request.reason)
        return pb.QuarantineResponse(digest=digest, quarantine=table)

    @guarded
    async def Unquarantine(self, request: Any, context: Context) -> pb.QuarantineResponse:
        digest, table = await self._control.unquarantine(
            request.version, actor=request.actor, reason=request.reason)
        return pb.QuarantineResponse(digest=digest, quarantine=table)

    @guarded
    async def Compare(self, request: Any, context: Context) -> pb.CompareResponse:
        return conv.compare(self._control.compare(request.model))

    @guarded
    async def Fleet(self, request: Any, context: Context) -> pb.FleetResponse:
        return conv.fleet(self._control.fleet_status())

    @guarded
    async def ListProposals(self, request: Any, context: Context
                            ) -> pb.ListProposalsResponse:
        return pb.ListProposalsResponse(
            proposals=[conv.proposal(p) for p in self._control.proposals(request.model)])

    @guarded
    async def Approve(self, request: Any, context: Context) -> pb.DecisionResponse:
        decision = await self._control.approve(
            request.model, actor=request.actor, reason=request.reason,
            proposal_id=request.proposal_id)
        return conv.decision(decision)

    @guarded
    async def Dismiss(self, request: Any, context: Context) -> pb.DecisionResponse:
        decision = await self._control.dismiss(
            request.model, actor=request.actor, reason=request.reason,
            proposal_id=request.proposal_id)
        return conv.decision(decision)

    async def WatchEvents(self, request: Any, context: Context) -> AsyncIterator[pb.Event]:
        try:
            refuse_undecodable(request)
            async for event in self._control.watch(after=request.after_seq,
                                                   model=request.model):
                yield conv.event(event)
        except Exception as exc:
            code, message = to_status(exc, "WatchEvents")
            await context.abort(code, message)


def add_to_server(control: ControlPlane, server: grpc.aio.Server) -> None:
    add_lenient(pb_grpc.add_ModelControlServicer_to_server, ControlServicer(control), server)
