"""A feedback client in a process of its own, driven by JSON lines on stdin.

The sidecar's generated feedback stub imports its `inference` proto package,
which cannot share a process with tritonclient's (the same package, another
file: protobuf refuses the duplicate symbols). The tests keep tritonclient for
ModelInfer and talk to this process for Send / SendStream; it uses nothing but
the generated stubs (`sidecar.rpc.proto.feedback_pb2*`).

    python tests/feedback_client.py ADDRESS

Each line in: {"op": "send" | "stream", "items": [ITEM, ...]}; each line out:
for "send", a list with per item {"outcome", "versions", "paired", "reason"}
or {"code", "details"}; for "stream", the summary as a dict, or
{"code", "details"}. An ITEM: {"model", "id", "truth": [TENSOR, ...],
"reward"?: float} or {"garbage": HEX} (raw bytes sent as a message, stream
only). A TENSOR: {"name", "datatype", "shape", "values"} (typed contents by
default; "raw": true sends raw_truth_contents; "raw_hex" gives the raw bytes
as they are).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict

from sidecar.rpc.proto import feedback_pb2 as pb
from sidecar.rpc.proto import feedback_pb2_grpc as pb_grpc

_TYPED = {"INT64": ("int64_contents", np.int64), "INT32": ("int_contents", np.int32),
          "FP32": ("fp32_contents", np.float32), "FP64": ("fp64_contents", np.float64),
          "BOOL": ("bool_contents", np.bool_), "BYTES": ("bytes_contents", object)}
_RAW = {"INT64": "<i8", "INT32": "<i4", "FP32": "<f4", "FP64": "<f8", "BOOL": "?",
        "UINT8": "u1"}


def request(item: dict[str, Any]) -> pb.FeedbackRequest:
    msg = pb.FeedbackRequest(model_name=item["model"], request_id=item["id"])
    if "reward" in item:
        msg.reward = item["reward"]
    for tensor in item.get("truth", []):
        added = msg.truth.add(name=tensor["name"], datatype=tensor["datatype"],
                              shape=tensor["shape"])
        if "raw_hex" in tensor:
            msg.raw_truth_contents.append(bytes.fromhex(tensor["raw_hex"]))
        elif tensor.get("raw"):
            array = np.asarray(tensor["values"], dtype=_RAW[tensor["datatype"]])
            msg.raw_truth_contents.append(array.tobytes())
        else:
            field, dtype = _TYPED[tensor["datatype"]]
            values = np.asarray(tensor["values"], dtype=dtype).ravel().tolist()
            if dtype is object:
                values = [v.encode() if isinstance(v, str) else v for v in values]
            getattr(added.contents, field).extend(values)
    return msg


def error(exc: grpc.RpcError) -> dict[str, str]:
    return {"code": exc.code().name, "details": exc.details() or ""}


def main() -> int:
    channel = grpc.insecure_channel(sys.argv[1])
    stub = pb_grpc.FeedbackStub(channel)
    raw_stream = channel.stream_unary("/sidecar.feedback.v1.Feedback/SendStream",
                                      request_serializer=lambda b: b,
                                      response_deserializer=pb.FeedbackSummary.FromString)
    for line in sys.stdin:
        command = json.loads(line)
        items = command["items"]
        out: Any
        if command["op"] == "send":
            out = []
            for item in items:
                try:
                    reply = stub.Send(request(item), timeout=30)
                except grpc.RpcError as exc:
                    out.append(error(exc))
                else:
                    out.append({"outcome": pb.FeedbackResponse.Outcome.Name(reply.outcome),
                                "versions": list(reply.versions), "paired": reply.paired,
                                "reason": reply.reason})
        else:
            messages = [bytes.fromhex(i["garbage"]) if "garbage" in i
                        else request(i).SerializeToString() for i in items]
            try:
                summary = raw_stream(iter(messages), timeout=60)
            except grpc.RpcError as exc:
                out = error(exc)
            else:
                out = MessageToDict(summary, preserving_proto_field_name=True,
                                    always_print_fields_with_no_presence=True)
                for key in ("received", "matched", "unmatched", "invalid", "paired"):
                    out[key] = int(out[key])
                for e in out["errors"]:
                    e["index"] = int(e["index"])
        print(json.dumps(out), flush=True)
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
