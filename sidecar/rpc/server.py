"""Assemble the inference gRPC server: data plane, health, reflection, limits."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sidecar.handlers.dataplane import DataPlane
from sidecar.rpc.dataplane import InferenceServicer
from sidecar.rpc.proto import inference_pb2, inference_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class BindError(RuntimeError):
    """The listen address cannot be bound (in use, or not an address of this host)."""


@dataclass
class InferenceServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int

    async def set_model_health(self, model: str, ready: bool) -> None:
        await self.health.set(model, SERVING if ready else NOT_SERVING)

    async def set_server_health(self, ready: bool) -> None:
        await self.health.set(health.OVERALL_HEALTH, SERVING if ready else NOT_SERVING)


def check_bindable(listen: str) -> None:
    """Bind the address once with a plain socket, so a port in use or an address
    not on this host is reported with the OS's reason before grpc tries it."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise BindError(f"cannot listen on {listen}: expected HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"cannot listen on {listen}: {exc.strerror}") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            raise BindError(f"cannot listen on {listen}: {exc.strerror}") from exc


def build_server(
    plane: DataPlane,
    *,
    listen: str,
    max_message_bytes: int,
    max_concurrent_rpcs: int,
    session_options: dict[str, str],
) -> InferenceServer:
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Without this, grpc on Linux binds a port another process holds
        # (SO_REUSEPORT) and two servers silently share it.
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(
        options=options, maximum_concurrent_rpcs=max_concurrent_rpcs or None
    )
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        InferenceServicer(plane, session_options), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    check_bindable(listen)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise BindError(f"cannot listen on {listen}: address in use or not available") from exc
    if port == 0:
        raise BindError(f"cannot listen on {listen}: address in use or not available")
    return InferenceServer(server, health_servicer, port)
