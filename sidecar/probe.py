"""`sidecar probe`: one gRPC health check, for a container HEALTHCHECK or a script.

Exit 0 when the service is SERVING, 1 when it is not (or cannot be reached),
2 for bad usage. Kubernetes needs no such command: its native gRPC probes call
the same health service.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:8001"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("probe", help="check the health service once (exit 0 if SERVING)",
                       description=__doc__)
    p.add_argument("--address", default=os.environ.get("SIDECAR_PROBE_ADDRESS", DEFAULT_ADDRESS),
                   help=f"HOST:PORT [env SIDECAR_PROBE_ADDRESS; default: {DEFAULT_ADDRESS}]")
    p.add_argument("--service", default="",
                   help='health service: "" for the server (default), or a model name')
    p.add_argument("--timeout", type=float, default=3.0, help="seconds [default: 3]")


def main(args: argparse.Namespace) -> int:
    request = health_pb2.HealthCheckRequest(service=args.service)
    try:
        with grpc.insecure_channel(args.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=args.timeout)
    except grpc.RpcError as exc:
        details = exc.details()
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            details = (f"no health service {args.service!r} (the server's is \"\", each"
                       " model's is its name)")
        print(f"{args.address} {args.service or '(server)'}: {exc.code().name}: {details}",
              file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address} {args.service or '(server)'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
