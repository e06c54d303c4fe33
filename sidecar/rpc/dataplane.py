"""Servicer of `inference.GRPCInferenceService`: unpack, call the handler, pack."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from types import CoroutineType
from typing import Any, TypeAlias

from sidecar.errors import PermissionDeniedError, UnimplementedError
from sidecar.handlers.dataplane import DataPlane
from sidecar.rpc import converters
from sidecar.rpc.decoding import Undecodable, refuse_undecodable
from sidecar.rpc.errors import guarded, to_status
from sidecar.rpc.proto import inference_pb2 as pb
from sidecar.rpc.proto import inference_pb2_grpc as pb_grpc

access = logging.getLogger("sidecar.access")

Context: TypeAlias = Any  # grpc.aio.ServicerContext (grpc ships no type hints)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    #: Methods that answer wire bytes, registered without a response serializer
    #: (rpc/decoding.py).
    RAW_RESPONSES = frozenset({"ModelInfer"})

    def __init__(self, plane: DataPlane, session_options: dict[str, str], *,
                 repository_control: bool, outcomes: dict[tuple[str, str], int] | None = None,
                 access_log: bool = False) -> None:
        self._plane = plane
        self._session_options = session_options
        #: (model, gRPC code) -> ModelInfer calls, for metrics; shared by servers
        self._outcomes = outcomes if outcomes is not None else {}
        self._access_log = access_log
        # RepositoryModelLoad/Unload change what serves: only on the control server.
        self._repository_control = repository_control

    def _check_control(self, method: str) -> None:
        if not self._repository_control:
            raise PermissionDeniedError(
                f"{method} is served on the control address (--control-listen), not here")

    @guarded
    async def ServerLive(self, request: Any, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._plane.live())

    @guarded
    async def ServerReady(self, request: Any, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._plane.ready())

    @guarded
    async def ModelReady(self, request: Any, context: Context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._plane.model_ready(request.name, request.version))

    @guarded
    async def ServerMetadata(self, request: Any, context: Context) -> pb.ServerMetadataResponse:
        name, version, extensions = self._plane.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    @guarded
    async def ModelMetadata(self, request: Any, context: Context) -> pb.ModelMetadataResponse:
        meta = self._plane.model_metadata(request.name, request.version)
        return converters.metadata_response(meta)

    @guarded
    async def ModelConfig(self, request: Any, context: Context) -> pb.ModelConfigResponse:
        meta = self._plane.model_metadata(request.name, request.version)
        return converters.config_response(meta, self._session_options)

    @guarded
    async def ModelStatistics(self, request: Any, context: Context) -> pb.ModelStatisticsResponse:
        rows = self._plane.statistics(request.name, request.version)
        return converters.statistics_response(rows)

    def _outcome(self, request: Any, code: str, start: int, version: str = "") -> None:
        # Unknown model names come from clients: one label for all of them. A model
        # that answered is known.
        name = getattr(request, "model_name", "")
        model = name if code == "OK" or self._plane.model_known(name) else "_unknown"
        key = (model, code)
        self._outcomes[key] = self._outcomes.get(key, 0) + 1
        if self._access_log:
            access.info("infer", extra={
                "model": name[:200], "version": version, "id": getattr(request, "id", ""),
                "code": code, "ms": round((time.perf_counter_ns() - start) / 1e6, 3)})

    async def _infer(self, request: Any, context: Context, start: int
                     ) -> pb.ModelInferResponse:
        refuse_undecodable(request)
        decoded = converters.infer_request(request, start, context.time_remaining)
        return await self._plane.infer(decoded, converters.infer_response)

    async def ModelInfer(self, request: Any, context: Context) -> bytes:
        """The hot path: the answer goes out as wire bytes (see RAW_RESPONSES),
        made without a coroutine of the handlers' when the request runs inline."""
        start = time.perf_counter_ns()
        try:
            if request.__class__ is Undecodable:
                raise request.error()
            answer: Any = self._plane.infer_now(
                converters.infer_request(request, start, context.time_remaining),
                converters.infer_response_wire)
            if type(answer) is CoroutineType:
                answer = await answer
        except Exception as exc:
            code, message = to_status(exc, "ModelInfer")
            self._outcome(request, code.name, start)
            await context.abort(code, message)
            raise  # unreachable: abort raises
        if self._access_log:
            self._outcome(request, "OK", start,
                          pb.ModelInferResponse.FromString(answer).model_version)
        else:  # _outcome, inlined
            key = (request.model_name, "OK")
            outcomes = self._outcomes
            outcomes[key] = outcomes.get(key, 0) + 1
        return answer  # type: ignore[no-any-return]
    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # Each request gets one response; an error goes into error_message and
        # the stream stays open (what tritonclient's stream API expects).
        async for request in request_iterator:
            start = time.perf_counter_ns()
            try:
                response = await self._infer(request, context, start)
            except Exception as exc:
                code, message = to_status(exc, "ModelStreamInfer")
                self._outcome(request, code.name, start)
                yield pb.ModelStreamInferResponse(
                    error_message=message,
                    infer_response=pb.ModelInferResponse(
                        model_name=getattr(request, "model_name", ""),
                        id=getattr(request, "id", ""),
                    ),
                )
            else:
                self._outcome(request, "OK", start, response.model_version)
                yield pb.ModelStreamInferResponse(infer_response=response)

    @guarded
    async def RepositoryIndex(self, request: Any, context: Context) -> pb.RepositoryIndexResponse:
        return converters.index_response(self._plane.repository_index(
            request.ready, detailed=self._repository_control))

    @guarded
    async def RepositoryModelLoad(
        self, request: Any, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        self._check_control("RepositoryModelLoad")
        await self._plane.load(request.model_name, converters.load_version(request))
        return pb.RepositoryModelLoadResponse()

    @guarded
    async def RepositoryModelUnload(
        self, request: Any, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        self._check_control("RepositoryModelUnload")
        await self._plane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _unimplemented(name: str, what: str) -> Any:
    """A servicer method that refuses with UnimplementedError, mapped by `guarded`."""

    async def method(self: InferenceServicer, request: Any, context: Context) -> Any:
        raise UnimplementedError(f"{name}: {what} is not supported")

    method.__name__ = method.__qualname__ = name
    return guarded(method)


for _name, _what in {
    "SystemSharedMemoryStatus": "system shared memory",
    "SystemSharedMemoryRegister": "system shared memory",
    "SystemSharedMemoryUnregister": "system shared memory",
    "CudaSharedMemoryStatus": "CUDA shared memory",
    "CudaSharedMemoryRegister": "CUDA shared memory",
    "CudaSharedMemoryUnregister": "CUDA shared memory",
    "TraceSetting": "tracing",
    "LogSettings": "changing log settings",
}.items():
    setattr(InferenceServicer, _name, _unimplemented(_name, _what))
