"""Assemble the two gRPC servers.

- inference (`--listen`): the Open Inference Protocol, feedback (ground truth
  for answers given: sidecar.feedback.v1.Feedback), health, reflection;
  repository changes (RepositoryModelLoad/Unload) are refused here.
- control (`--control-listen`, loopback by default): ModelControl, the full
  inference service (so tritonclient's load_model/unload_model work),
  feedback, health and reflection, behind the bearer token when one is set,
  and mutual TLS when a client CA is given.

Feedback has no health status of its own: it is answered whenever the server
runs (a model without a serving version answers its ids as unmatched).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sidecar.handlers.control import ControlPlane
from sidecar.handlers.dataplane import DataPlane
from sidecar.handlers.feedback import FeedbackPlane
from sidecar.rpc import control
from sidecar.rpc.auth import BearerTokenInterceptor
from sidecar.rpc.dataplane import InferenceServicer
from sidecar.rpc.decoding import add_lenient
from sidecar.rpc.feedback import FeedbackServicer
from sidecar.rpc.proto import (
    control_pb2,
    feedback_pb2,
    feedback_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
CONTROL_SERVICE = control_pb2.DESCRIPTOR.services_by_name["ModelControl"].full_name
FEEDBACK_SERVICE = feedback_pb2.DESCRIPTOR.services_by_name["Feedback"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class BindError(RuntimeError):
    """The listen address cannot be bound (in use, or not an address of this host)."""


@dataclass
class Listener:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    address: str

    async def set_health(self, service: str, ready: bool) -> None:
        await self.health.set(service, SERVING if ready else NOT_SERVING)


def check_bindable(listen: str) -> None:
    """Bind the address once with a plain socket, so a port in use or an address
    not on this host is reported with the OS's reason before grpc tries it.

    The probe binds as the servers will, with SO_REUSEADDR (grpc and asyncio set
    it on their listening sockets): connections of a previous process left in
    TIME_WAIT, after a crash or a metrics scrape, do not block a restart for a
    minute, while a port that another socket listens on is still refused."""
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
        if os.name == "posix":  # on Windows the option would let it share a live port
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise BindError(f"cannot listen on {listen}: {exc.strerror}") from exc


def _server(*, max_message_bytes: int, max_concurrent_rpcs: int = 0,
            interceptors: tuple[Any, ...] = ()) -> grpc.aio.Server:
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Without this, grpc on Linux binds a port another process holds
        # (SO_REUSEPORT) and two servers silently share it.
        ("grpc.so_reuseport", 0),
    ]
    return grpc.aio.server(options=options, interceptors=interceptors or None,
                           maximum_concurrent_rpcs=max_concurrent_rpcs or None)


def _bind(server: grpc.aio.Server, listen: str, credentials: Any) -> tuple[int, str]:
    check_bindable(listen)
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
    except RuntimeError as exc:
        raise BindError(f"cannot listen on {listen}: address in use or not available") from exc
    if port == 0:
        raise BindError(f"cannot listen on {listen}: address in use or not available")
    return port, f"{listen.rsplit(':', 1)[0]}:{port}"


def _add_common(server: grpc.aio.Server, names: tuple[str, ...]) -> health.aio.HealthServicer:
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*names, HEALTH_SERVICE, reflection.SERVICE_NAME),
                                        server)
    return health_servicer


def _add_feedback(server: grpc.aio.Server, feedback: FeedbackPlane | None) -> tuple[str, ...]:
    """Register the feedback service (if there is one); the names it adds."""
    if feedback is None:
        return ()
    add_lenient(feedback_pb2_grpc.add_FeedbackServicer_to_server, FeedbackServicer(feedback),
                server)
    return (FEEDBACK_SERVICE,)


def build_inference_server(
    plane: DataPlane, *, listen: str, max_message_bytes: int, max_concurrent_rpcs: int,
    session_options: dict[str, str], credentials: Any = None,
    outcomes: dict[tuple[str, str], int] | None = None, access_log: bool = False,
    feedback: FeedbackPlane | None = None,
) -> Listener:
    server = _server(max_message_bytes=max_message_bytes,
                     max_concurrent_rpcs=max_concurrent_rpcs)
    # Payloads that do not parse become INVALID_ARGUMENT, not a logged traceback.
    add_lenient(inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
                InferenceServicer(plane, session_options, repository_control=False,
                                  outcomes=outcomes, access_log=access_log), server)
    names = _add_feedback(server, feedback)
    health_servicer = _add_common(server, (INFERENCE_SERVICE, *names))
    _, address = _bind(server, listen, credentials)
    return Listener(server, health_servicer, address)


def build_control_server(
    plane: DataPlane, control_plane: ControlPlane, *, listen: str, max_message_bytes: int,
    session_options: dict[str, str], token: str = "", credentials: Any = None,
    outcomes: dict[tuple[str, str], int] | None = None, feedback: FeedbackPlane | None = None,
) -> Listener:
    interceptors = (BearerTokenInterceptor(token),) if token else ()
    server = _server(max_message_bytes=max_message_bytes, interceptors=interceptors)
    control.add_to_server(control_plane, server)
    add_lenient(inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
                InferenceServicer(plane, session_options, repository_control=True,
                                  outcomes=outcomes), server)
    names = _add_feedback(server, feedback)
    health_servicer = _add_common(server, (CONTROL_SERVICE, INFERENCE_SERVICE, *names))
    _, address = _bind(server, listen, credentials)
    return Listener(server, health_servicer, address)
