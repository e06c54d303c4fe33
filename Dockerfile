# The sidecar as a container image: `sidecar serve` on 8001 (inference, health,
# reflection), 8002 (control, loopback unless SIDECAR_CONTROL_LISTEN says
# otherwise) and 8003 (Prometheus /metrics), configured by SIDECAR_* variables.
#
#   docker build -t sidecar .
#   docker run --rm -p 8001:8001 -v "$PWD/examples/models:/models:ro" sidecar
#
# Two stages: the build stage creates /opt/venv and installs the pinned
# dependencies (constraints.txt) and the package; the final stage copies only the
# venv onto a fresh python:3.11-slim (no compilers, no pip cache, no sources).
# scripts/container-test.sh builds and runs this file for real.

FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, from pyproject.toml's list pinned by constraints.txt: this
# layer is rebuilt only when one of these two files changes, not on every code edit.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt

# Then the package itself (pure Python; its dependencies are already in place).
# Last, pip and setuptools leave the venv: nothing imports them at run time (23 MB).
COPY README.md ./
COPY sidecar ./sidecar
RUN pip install --no-cache-dir --no-deps -c constraints.txt . \
 && pip check \
 && sidecar --version \
 && pip uninstall --yes pip setuptools


FROM python:3.11-slim

# A fixed non-root uid/gid: deploy/kubernetes uses the same numbers (runAsUser),
# and tests/test_deploy.py checks that they agree. --no-log-init: no sparse lastlog.
RUN groupadd --gid 10001 sidecar \
 && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sidecar \
 && mkdir -p /models /var/lib/sidecar \
 && chown 10001:10001 /var/lib/sidecar

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
# Docker keeps HEALTHCHECK in its image format only (podman build --format docker).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["sidecar", "probe", "--timeout", "3"]

# Exec form: `sidecar serve` is PID 1 and receives SIGTERM itself. It installs its
# own SIGTERM/SIGINT handler (health NOT_SERVING, drain for SIDECAR_GRACE_S, exit 0)
# and starts no child processes, so it needs no init (tini / `docker run --init`);
# `--init` does no harm either (the init forwards SIGTERM and returns the exit code).
ENTRYPOINT ["sidecar", "serve"]
