"""The Dockerfile and deploy/kubernetes agree with each other and with the sidecar.

No network, no cluster, no container runtime: hadolint lints the Dockerfile, and
the manifests are read with PyYAML and compared with the Dockerfile's EXPOSE, ENV,
USER and VOLUME and with `Settings`' defaults. scripts/container-test.sh runs the
image for real.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
K8S = REPO / "deploy" / "kubernetes"
MODELS = REPO / "examples" / "models"
SIDECAR_CONTAINER = "sidecar"

Manifest = dict[str, Any]


@dataclass
class Stage:
    """The instructions of one Dockerfile stage that the deployment depends on."""

    env: dict[str, str] = field(default_factory=dict)
    expose: set[int] = field(default_factory=set)
    volumes: list[str] = field(default_factory=list)
    user: str = ""
    entrypoint: str = ""
    healthcheck: str = ""


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    return result


def _env_pairs(args: str) -> dict[str, str]:
    words = shlex.split(args)
    if words and "=" not in words[0]:  # legacy form: ENV KEY value with spaces
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def _final_stage(text: str) -> Stage:
    stage = Stage()
    for keyword, args in _instructions(text):
        if keyword == "FROM":
            stage = Stage()
        elif keyword == "ENV":
            stage.env.update(_env_pairs(args))
        elif keyword == "EXPOSE":
            stage.expose |= {int(port.split("/")[0]) for port in args.split()}
        elif keyword == "VOLUME":
            stage.volumes += json.loads(args) if args.startswith("[") else args.split()
        elif keyword == "USER":
            stage.user = args
        elif keyword == "ENTRYPOINT":
            stage.entrypoint = args
        elif keyword == "HEALTHCHECK":
            stage.healthcheck = args
    return stage


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0]


@pytest.fixture(scope="module")
def image() -> Stage:
    return _final_stage(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def manifests() -> list[Manifest]:
    docs: list[Manifest] = []
    for path in sorted([*K8S.glob("*.yaml"), *K8S.glob("*.yml")]):
        with path.open() as handle:
            docs += [doc for doc in yaml.safe_load_all(handle) if doc]
    assert docs, f"no manifests under {K8S}"
    return docs


@pytest.fixture(scope="module")
def pod(manifests: list[Manifest]) -> Manifest:
    deployments = [doc for doc in manifests if doc.get("kind") == "Deployment"]
    assert len(deployments) == 1, "expected one Deployment in deploy/kubernetes"
    spec: Manifest = deployments[0]["spec"]["template"]
    return spec


@pytest.fixture(scope="module")
def sidecar(pod: Manifest) -> Manifest:
    found: list[Manifest] = [c for c in pod["spec"]["containers"] if c["name"] == SIDECAR_CONTAINER]
    assert len(found) == 1, f"no container named {SIDECAR_CONTAINER!r} in the Deployment"
    return found[0]


def _all_containers(pod: Manifest) -> list[Manifest]:
    spec = pod["spec"]
    containers: list[Manifest] = [*spec.get("initContainers", []), *spec["containers"]]
    return containers


def _effective_env(image: Stage, container: Manifest) -> dict[str, str]:
    """The image's ENV overridden by the container's literal env values."""
    env = dict(image.env)
    env.update({e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e})
    return env


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: it comes with the test extras (pip install -e '.[test]')"
    return found


def test_hadolint_finds_no_error() -> None:
    """hadolint (with .hadolint.yaml, if any) reports no error-level finding in the Dockerfile."""
    run = subprocess.run(
        [_hadolint(), "--no-fail", "--format", "json", DOCKERFILE.name],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    findings = json.loads(run.stdout or "[]")
    errors = [f"{f['line']}: {f['code']} {f['message']}" for f in findings
              if f["level"] == "error"]
    assert not errors, "hadolint errors:\n" + "\n".join(errors)


def test_image_runs_sidecar_serve_as_pid_1_with_a_probe(image: Stage) -> None:
    """The final stage runs `sidecar serve` in exec form and health-checks with `sidecar probe`."""
    assert json.loads(image.entrypoint) == ["sidecar", "serve"]
    assert "sidecar" in image.healthcheck and "probe" in image.healthcheck


def test_ports_match_expose_and_setting_defaults(image: Stage, sidecar: Manifest) -> None:
    """The sidecar's container ports are the Dockerfile's EXPOSEd ports and the listen defaults."""
    defaults = Settings()
    env = _effective_env(image, sidecar)
    inference = _port(env.get("SIDECAR_LISTEN", defaults.listen))
    metrics = _port(env.get("SIDECAR_METRICS_LISTEN", defaults.metrics_listen))
    control = _port(env.get("SIDECAR_CONTROL_LISTEN", defaults.control_listen))
    assert (inference, control, metrics) == (
        _port(defaults.listen), _port(defaults.control_listen), _port(defaults.metrics_listen))
    assert {inference, control, metrics} <= image.expose
    declared = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert declared.get("grpc") == inference
    assert declared.get("metrics") == metrics


def test_control_port_stays_on_loopback(
    image: Stage, sidecar: Manifest, manifests: list[Manifest]
) -> None:
    """The control port listens on 127.0.0.1 only, is not declared, and no Service targets it."""
    env = _effective_env(image, sidecar)
    control = env.get("SIDECAR_CONTROL_LISTEN", Settings().control_listen)
    assert _host(control) == "127.0.0.1"
    assert _port(control) not in {p["containerPort"] for p in sidecar["ports"]}
    for service in (doc for doc in manifests if doc.get("kind") == "Service"):
        for port in service["spec"]["ports"]:
            assert port.get("targetPort") not in (_port(control), "control")
            assert port["port"] != _port(control)


def test_probes_are_grpc_on_the_inference_port(image: Stage, sidecar: Manifest) -> None:
    """Startup and liveness probe the server (service ""), readiness a model of examples/models."""
    inference = _port(_effective_env(image, sidecar).get("SIDECAR_LISTEN", Settings().listen))
    probes = {kind: sidecar[kind]["grpc"]
              for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert all(probe["port"] == inference for probe in probes.values())
    assert probes["startupProbe"].get("service", "") == ""
    assert probes["livenessProbe"].get("service", "") == ""
    model = probes["readinessProbe"].get("service", "")
    models = {path.name for path in MODELS.iterdir() if path.is_dir()}
    assert model in models, f"readiness service {model!r} is not a model in {MODELS}"


def test_mounts_match_the_image_paths(image: Stage, sidecar: Manifest, pod: Manifest) -> None:
    """The model repository and state dir are mounted where the image's ENV points, as VOLUMEs."""
    env = _effective_env(image, sidecar)
    repository = env["SIDECAR_MODEL_REPOSITORY"]
    state_dir = env["SIDECAR_STATE_DIR"]
    assert image.env["SIDECAR_MODEL_REPOSITORY"] in image.volumes
    assert image.env["SIDECAR_STATE_DIR"] in image.volumes
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert repository in mounts and state_dir in mounts
    assert mounts[repository].get("readOnly") is True
    assert not mounts[state_dir].get("readOnly", False)
    assert "emptyDir" in volumes[mounts[state_dir]["name"]]


def test_control_token_comes_from_a_read_only_secret(sidecar: Manifest, pod: Manifest) -> None:
    """SIDECAR_CONTROL_TOKEN_FILE names a file inside a read-only mount of a Secret volume."""
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    token_file = env["SIDECAR_CONTROL_TOKEN_FILE"]
    mount = next(m for m in sidecar["volumeMounts"]
                 if token_file.startswith(m["mountPath"].rstrip("/") + "/"))
    assert mount.get("readOnly") is True
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    assert "secret" in volume
    assert "SIDECAR_CONTROL_TOKEN" not in env, "a literal token in the manifest"


def test_runs_as_the_image_user(image: Stage, pod: Manifest, sidecar: Manifest) -> None:
    """The pod runs as non-root with the numeric uid of the Dockerfile's USER."""
    uid = image.user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {image.user!r}: need a numeric non-root uid"
    pod_context = pod["spec"].get("securityContext", {})
    container_context = sidecar.get("securityContext", {})
    context = {**pod_context, **container_context}
    assert context.get("runAsNonRoot") is True
    assert context.get("runAsUser") == int(uid)
    for level in (pod_context, container_context):
        assert level.get("runAsUser", int(uid)) == int(uid)


def test_every_container_is_locked_down(pod: Manifest) -> None:
    """Every container has a read-only root, no privilege escalation and drops all capabilities."""
    for container in _all_containers(pod):
        context = container.get("securityContext", {})
        name = container["name"]
        assert context.get("readOnlyRootFilesystem") is True, name
        assert context.get("allowPrivilegeEscalation") is False, name
        assert context.get("capabilities", {}).get("drop") == ["ALL"], name


def _prestop_seconds(container: Manifest) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    return float(command[1]) if command[:1] == ["sleep"] else 0.0


def test_grace_period_outlasts_prestop_and_drain(
    image: Stage, pod: Manifest, sidecar: Manifest
) -> None:
    """terminationGracePeriodSeconds exceeds the sidecar's preStop sleep plus SIDECAR_GRACE_S."""
    grace = float(_effective_env(image, sidecar).get("SIDECAR_GRACE_S", Settings().grace_s))
    period = pod["spec"]["terminationGracePeriodSeconds"]
    assert period > _prestop_seconds(sidecar) + grace
    assert period > grace


def test_scrape_annotations_point_at_the_metrics_endpoint(
    image: Stage, pod: Manifest, sidecar: Manifest
) -> None:
    """The pod's Prometheus annotations scrape the sidecar's metrics port at /metrics."""
    annotations = pod["metadata"]["annotations"]
    metrics = _effective_env(image, sidecar).get("SIDECAR_METRICS_LISTEN",
                                                 Settings().metrics_listen)
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == _port(metrics)
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    assert _port(metrics) in {p["containerPort"] for p in sidecar["ports"]}


def test_kustomization_lists_every_manifest() -> None:
    """kustomization.yaml's resources are exactly the other manifests in deploy/kubernetes."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in [*K8S.glob("*.yaml"), *K8S.glob("*.yml")]} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
