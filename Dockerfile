# The sidecar as a container image: `sidecar serve` on 8001 (inference, health,
# reflection), 8002 (control, loopback unless SIDECAR_CONTROL_LISTEN says
# otherwise) and 8003 (Prometheus /metrics), configured by SIDECAR_* variables.
# README, "Container image", has the commands; in short:
#
#   docker build -t sidecar .
#   podman build --format docker -t sidecar .
#   # no registry (or a mirror): name the base image, local or mirrored
#   podman build --format docker --build-arg BASE_IMAGE=localhost/python:3.11-slim -t sidecar .
#   docker run --rm -p 8001:8001 -v "$PWD/examples/models:/models:ro" -v sidecar-state:/var/lib/sidecar sidecar
#
# Two stages on the same base: the build stage creates /opt/venv with the runtime
# dependencies only (pyproject.toml's list pinned by constraints.txt, no test
# extras) and the package, then removes what serving never loads (pip, setuptools,
# test suites, numpy's build tools, onnxruntime's offline tools and unused C API
# library); the final stage copies only that venv onto a fresh base (no compilers,
# no pip cache, no sources). scripts/container-test.sh builds this file with the
# podman command of the README and runs the image for real.

# Any image with CPython 3.11 and a POSIX shell: the public one by default, or a
# copy in a local store or a mirror (`--build-arg BASE_IMAGE=...`). Fully
# qualified, so podman does not have to resolve a short name.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim


FROM ${BASE_IMAGE} AS build
LABEL org.opencontainers.image.title=sidecar

# PIP_CERT: the base image's own CA bundle (public CAs). Behind a TLS-intercepting
# proxy, mount the proxy's bundle over it for the build only (README, "Container image").
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, from pyproject.toml's list pinned by constraints.txt: this
# layer is rebuilt only when one of these two files changes, not on every code edit.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt

# Then the package itself (pure Python; its dependencies are already in place),
# then the venv loses what serving never loads (measured with du, README
# "Container image": 180 -> 114 MiB by du -sh):
#   - pip and setuptools (nothing imports them at run time);
#   - numpy's test suites and test-only extension modules, f2py, distutils, C
#     headers, the PyInstaller hook, and *.pyi/*.pxd stubs of every package;
#   - onnxruntime's offline tools (quantization, transformers optimiser, model
#     converters, sample models, the onnx backend) and libonnxruntime.so, the C API
#     library: the Python binding is self-contained (it does not link or load it);
#   - debug symbols of the packages' own extension modules, if the base has
#     `strip` (python:3.11-slim has no binutils: then nothing is stripped; it
#     would save ~2 MB, numpy's; the others ship stripped). Never the libraries
#     auditwheel vendored in *.libs/: strip corrupts them (numpy then fails to
#     import: "ELF load command address/offset not page-aligned").
# The .pyc files pip compiled stay: the root filesystem may be read-only and no
# start should have to recompile. A smoke test runs onnxruntime, numpy and the CLI
# on what is left.
COPY README.md ./
COPY sidecar ./sidecar
RUN pip install --no-cache-dir --no-deps -c constraints.txt . \
 && pip check \
 && pip uninstall --yes pip setuptools \
 && SP=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
 && cp "$SP/onnxruntime/datasets/mul_1.onnx" /tmp/smoke.onnx \
 && find "$SP/numpy" -depth -type d -name tests -exec rm -rf {} + \
 && rm -rf "$SP/numpy/f2py" "$SP/numpy/distutils" "$SP/numpy/_pyinstaller" \
           "$SP/numpy/_core/include" "$SP/numpy/conftest.py" \
           "$SP"/numpy/_core/_simd.*.so "$SP"/numpy/_core/_*_tests.*.so \
           /opt/venv/bin/f2py /opt/venv/bin/numpy-config \
           "$SP/onnxruntime/tools" "$SP/onnxruntime/quantization" \
           "$SP/onnxruntime/transformers" "$SP/onnxruntime/datasets" \
           "$SP/onnxruntime/backend" "$SP"/onnxruntime/capi/libonnxruntime.so.* \
           /opt/venv/bin/onnxruntime_test \
 && find "$SP" -type f \( -name '*.pyi' -o -name '*.pxd' \) -delete \
 && if command -v strip >/dev/null; then \
        find "$SP" -type f -name '*.so*' ! -path '*.libs/*' -exec strip --strip-unneeded {} +; \
    fi \
 && python -c 'import numpy as np, onnxruntime as ort, grpc, watchfiles, prometheus_client; \
s = ort.InferenceSession("/tmp/smoke.onnx", providers=["CPUExecutionProvider"]); \
y = s.run(None, {"X": np.ones((3, 2), np.float32)})[0]; \
assert y.tolist() == [[1, 2], [3, 4], [5, 6]], y; \
print("smoke test: numpy", np.__version__, "onnxruntime", ort.__version__, "grpcio", grpc.__version__)' \
 && sidecar --version \
 && rm /tmp/smoke.onnx \
 && du -sh /opt/venv


FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title=sidecar

# git, for provenance only: when the model repository is a git work tree (git-sync,
# a clone), each version shows the commit that last changed its file (`git log -1`
# off the request path; docs/gitops.md). Without recommends: no man pages, no ssh.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
    /usr/share/doc/* /usr/share/man/* \
 && git --version

# A fixed non-root uid/gid: deploy/kubernetes uses the same numbers (runAsUser),
# and tests/test_deploy.py checks that they agree. --no-log-init: no sparse lastlog.
RUN groupadd --gid 10001 sidecar \
 && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sidecar \
 && mkdir -p /models /var/lib/sidecar \
 && chown 10001:10001 /var/lib/sidecar

# The venv holds the dependencies and the package (no sources, no tests); root-owned,
# so the sidecar user cannot change it.
COPY --from=build /opt/venv /opt/venv

# Everything is configured by SIDECAR_* variables (README, "Settings"); these are
# the image's choices, each one overridable with -e / env:.
#   SIDECAR_CONTROL_LISTEN stays on loopback: only the pod (or the container)
#   reaches the control port. Publishing 8002 needs SIDECAR_CONTROL_LISTEN=0.0.0.0:8002
#   and a token (SIDECAR_CONTROL_TOKEN_FILE), better also TLS.
#   PYTHONDONTWRITEBYTECODE: the venv's .pyc files were compiled at install time;
#   nothing is written at run time, so the root filesystem can be read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8 \
    SIDECAR_MODEL_REPOSITORY=/models \
    SIDECAR_STATE_DIR=/var/lib/sidecar \
    SIDECAR_LISTEN=0.0.0.0:8001 \
    SIDECAR_CONTROL_LISTEN=127.0.0.1:8002 \
    SIDECAR_METRICS_LISTEN=0.0.0.0:8003 \
    SIDECAR_GRACE_S=20 \
    SIDECAR_LOG_FORMAT=json \
    SIDECAR_PROBE_ADDRESS=127.0.0.1:8001

USER 10001:10001

# /models: the model repository (read-only is fine); /var/lib/sidecar: state.json
# and events.jsonl, must be writable and should outlive the container.
VOLUME ["/models", "/var/lib/sidecar"]

# 8001 inference gRPC (+ grpc.health.v1, reflection), 8002 control gRPC,
# 8003 Prometheus metrics over HTTP at /metrics.
EXPOSE 8001 8002 8003

# One grpc.health.v1 Check of the server (service ""): exit 0 only when SERVING.
# Docker keeps HEALTHCHECK in its image format only: podman needs --format docker
# (its default OCI format drops it, with a warning).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["sidecar", "probe", "--timeout", "3"]

# Exec form: `sidecar serve` is PID 1 and receives SIGTERM itself. It installs its
# own SIGTERM/SIGINT handler (health NOT_SERVING, drain for SIDECAR_GRACE_S, exit 0)
# and starts no child processes, so it needs no init (tini / `docker run --init`);
# `--init` does no harm either (the init forwards SIGTERM and returns the exit code).
ENTRYPOINT ["sidecar", "serve"]
