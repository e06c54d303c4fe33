"""Server and model metadata, config, statistics, index, health and reflection."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from conftest import ServerProcess
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import client, infer_input, status_of


def test_server_live_ready_and_metadata(server: ServerProcess) -> None:
    """The server is live and ready, and names itself and its extensions."""
    c = client(server.address)
    assert c.is_server_live() and c.is_server_ready()
    meta = c.get_server_metadata()
    assert meta.name == "sidecar" and meta.version
    assert {"model_repository", "model_configuration", "statistics"} <= set(meta.extensions)


def test_model_ready_for_known_and_unknown(server: ServerProcess) -> None:
    """ModelReady: true for a served model/version, false (not an error) otherwise."""
    c = client(server.address)
    assert c.is_model_ready("tiny") and c.is_model_ready("tiny", "2")
    assert c.is_model_ready("tiny", "1")  # the warm previous version
    assert not c.is_model_ready("trio", "1")  # on disk, not loaded
    assert not c.is_model_ready("tiny", "7")
    assert not c.is_model_ready("nosuch")


def test_model_metadata_gives_the_signature(server: ServerProcess) -> None:
    """ModelMetadata: platform, loaded versions, inputs and outputs with -1 for dynamic dims."""
    meta = client(server.address).get_model_metadata("tiny")
    assert meta.name == "tiny" and meta.platform == "onnxruntime_onnx"
    assert list(meta.versions) == ["1", "2"]  # loaded: active and previous
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("INPUT0", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("OUTPUT0", "FP32", [-1, 3])]
    text = client(server.address).get_model_metadata("text")
    assert text.inputs[0].datatype == "BYTES" and list(text.inputs[0].shape) == [-1]


def test_model_metadata_for_unknown_model_is_not_found(server: ServerProcess) -> None:
    """ModelMetadata of an unknown model: NOT_FOUND naming it."""
    code, message = status_of(lambda: client(server.address).get_model_metadata("nosuch"))
    assert code == "NOT_FOUND" and "nosuch" in message


def test_model_config_subset(server: ServerProcess) -> None:
    """ModelConfig decodes with tritonclient's own descriptor and holds the signature."""
    config = client(server.address).get_model_config("tiny").config
    assert config.name == "tiny" and config.platform == "onnxruntime_onnx"
    assert config.backend == "onnxruntime"
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("INPUT0", 11, [-1, 4])]  # TYPE_FP32
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("OUTPUT0", 11, [-1, 3])]
    assert list(config.version_policy.specific.versions) == [1, 2]
    assert config.parameters["graph_optimization"].string_value == "all"


def test_statistics_count_successes_per_version(start_server, standard_repo) -> None:  # type: ignore[no-untyped-def]
    """ModelStatistics counts successful inferences and batch elements since load."""
    srv = start_server(standard_repo)
    c = client(srv.address)
    for _ in range(3):
        c.infer("tiny", [infer_input("INPUT0", np.ones((2, 4), np.float32), "FP32")])
    # a client error does not reach the model and is not counted as a failure
    with pytest.raises(Exception, match="WRONG"):
        c.infer("tiny", [infer_input("WRONG", np.ones((2, 4), np.float32), "FP32")])
    stats = c.get_inference_statistics("tiny").model_stats
    assert [(s.name, s.version) for s in stats] == [("tiny", "1"), ("tiny", "2")]
    s = stats[1]
    assert stats[0].execution_count == 0  # the previous version served nothing
    assert s.execution_count == 3 and s.inference_count == 6
    assert s.inference_stats.success.count == 3 and s.inference_stats.success.ns > 0
    assert s.inference_stats.fail.count == 0
    assert s.last_inference > 0
    everything = c.get_inference_statistics("").model_stats
    assert {s.name for s in everything} == {"tiny", "text", "dtypes", "int8", "trio"}


def test_statistics_for_unknown_model_is_not_found(server: ServerProcess) -> None:
    """ModelStatistics of an unknown model: NOT_FOUND."""
    code, _ = status_of(lambda: client(server.address).get_inference_statistics("nosuch"))
    assert code == "NOT_FOUND"


def test_repository_index_lists_every_version_on_disk(server: ServerProcess) -> None:
    """RepositoryIndex lists each version folder with its state."""
    index = client(server.address).get_model_repository_index().models
    rows = {(m.name, m.version): m.state for m in index}
    assert rows[("tiny", "2")] == "ACTIVE"
    assert rows[("tiny", "1")] == "PREVIOUS"
    assert rows[("trio", "1")] == "UNLOADED"
    assert rows[("text", "1")] == "ACTIVE"
    ready = client(server.address).get_model_repository_index()
    assert ready.models


@pytest.mark.parametrize("call", [
    "get_system_shared_memory_status", "get_cuda_shared_memory_status", "get_trace_settings",
    "get_log_settings",
])
def test_optional_rpcs_are_unimplemented(server: ServerProcess, call: str) -> None:
    """Shared memory, trace and log settings answer UNIMPLEMENTED, clearly."""
    code, message = status_of(lambda: getattr(client(server.address), call)())
    assert code == "UNIMPLEMENTED" and "not supported" in message


def test_health_overall_and_per_model(server: ServerProcess) -> None:
    """grpc.health.v1: "" and each model are SERVING; an unknown name is NOT_FOUND."""
    with server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "tiny", "text"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="nosuch"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(server: ServerProcess) -> None:
    """Server reflection names the inference, health and reflection services."""
    with server.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    names = {s.name for s in reply.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_repository_load_and_unload(start_server, standard_repo) -> None:  # type: ignore[no-untyped-def]
    """On the control address, RepositoryModelLoad activates a version (the old one
    stays as previous) and RepositoryModelUnload stops serving the model, as its
    health says; the inference address refuses both."""
    srv = start_server(standard_repo)
    data = client(srv.address)
    code, message = status_of(lambda: data.load_model("tiny"))
    assert code == "PERMISSION_DENIED" and "--control-listen" in message
    code, message = status_of(lambda: data.unload_model("tiny"))
    assert code == "PERMISSION_DENIED"
    c = client(srv.control_address)  # repository changes: the control address
    x = np.ones((1, 4), np.float32)
    c.load_model("tiny", config=None, files=None)  # no version: the highest, already active
    assert c.infer("tiny", [infer_input("INPUT0", x, "FP32")]).get_response().model_version == "2"
    # version 1 by parameter (tritonclient has no version argument: send the raw RPC)
    from tritonclient.grpc import service_pb2 as pb

    request = pb.RepositoryModelLoadRequest(model_name="tiny")
    request.parameters["version"].int64_param = 1
    c._client_stub.RepositoryModelLoad(request, timeout=30)
    assert c.infer("tiny", [infer_input("INPUT0", x, "FP32")]).get_response().model_version == "1"
    previous = c.infer("tiny", [infer_input("INPUT0", x, "FP32")], model_version="2")
    assert previous.get_response().model_version == "2"
    states = {(m.name, m.version): m.state for m in c.get_model_repository_index().models}
    assert states[("tiny", "1")] == "ACTIVE" and states[("tiny", "2")] == "PREVIOUS"

    c.unload_model("tiny")
    assert not c.is_model_ready("tiny")
    code, message = status_of(lambda: c.infer("tiny", [infer_input("INPUT0", x, "FP32")]))
    assert code == "UNAVAILABLE" and "tiny" in message
    with srv.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tiny"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert c.is_server_ready()  # unloaded by command: the operator's choice, still ready
    c.load_model("tiny")
    assert c.is_model_ready("tiny") and c.is_server_ready()
    code, message = status_of(lambda: c.load_model("nosuch"))
    assert code == "NOT_FOUND" and "nosuch" in message
