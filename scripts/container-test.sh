#!/usr/bin/env bash
# Build the Dockerfile from this checkout with the README's podman command and run
# the image for real, as root with Debian's podman (no Docker daemon and no image
# registry needed; PyPI and a Debian mirror must be reachable).
#
#   bash scripts/container-test.sh        # from anywhere; CI (.ci/run) runs it after `make test`
#
# 1. installs podman, runc, catatonit, debootstrap with apt if one is missing;
# 2. uses podman as installed: its normal storage (/var/lib/containers/storage, so
#    `podman images` shows what this script built), nothing written to /etc. A work
#    dir ($SIDECAR_CONTAINER_WORK, default /var/tmp/sidecar-container-test) holds a
#    lock, the stand-in's build files and the run's token;
# 3. the base image, $SIDECAR_BASE_IMAGE (default localhost/python:3.11-slim): used if
#    podman has it, pulled if it names a registry (a mirror), else, with no registry
#    here, the default is built once as a stand-in for python:3.11-slim: Debian
#    bookworm (debootstrap from the mirror apt uses) with Debian's Python 3.11 and
#    python3-venv. About a minute the first time, kept for later runs;
# 4. builds the image with the README's command (README, "Container image"):
#      podman build --format docker --build-arg BASE_IMAGE=$BASE_IMAGE -t sidecar .
#    plus, because PyPI's TLS is intercepted here, the host CA bundle mounted over the
#    build's bundle (RUN steps only: the image keeps its own). The image stays, as
#    `localhost/sidecar:latest`; the previous build of that tag and the untagged images
#    of earlier builds that this one did not reuse as cache are removed;
# 5. runs it like a pod would: root filesystem read-only, all capabilities dropped,
#    examples/models mounted read-only, a control token from a read-only file, the
#    control port opened to the host (SIDECAR_CONTROL_LISTEN=0.0.0.0:8002) on 127.0.0.1;
# 6. from the host (.venv, made by `make test`): waits for grpc.health.v1 SERVING,
#    infers with tritonclient (version 2's values), `sidecar ctl rollback tiny` with the
#    token (then version 1's values), a call without the token and one with a wrong
#    token are refused, /metrics answers; inside: the image's HEALTHCHECK, uid 10001,
#    read-only root, state.json written, no compiler, no pip, no test suites;
# 7. `podman stop -t 30`: exit code 0 (SIGTERM handled: not 143, not killed: not 137),
#    then the container and its anonymous volumes are removed;
# 8. prints the image size, what the venv holds, the container's RSS while serving
#    and the time of each phase.
# Any step that cannot run fails the script with a message; nothing is skipped.
set -euo pipefail
set -o errtrace
on_err() { echo "container-test: FAIL: exit $1 at line $2: ${BASH_COMMAND%%$'\n'*}" >&2; }
trap 'on_err $? $LINENO' ERR

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PW=${SIDECAR_CONTAINER_WORK:-/var/tmp/sidecar-container-test}
IMAGE=${SIDECAR_TEST_IMAGE:-sidecar}                  # the README's tag: localhost/sidecar:latest
BASE_IMAGE=${SIDECAR_BASE_IMAGE:-localhost/python:3.11-slim}
DEBIAN=localhost/debian:bookworm-minbase             # the stand-in's own base
HOST_CA=/etc/ssl/certs/ca-certificates.crt
PY=$ROOT/.venv/bin/python
SIDECAR=$ROOT/.venv/bin/sidecar
NAME=sidecar-container-test-$$
LABEL=org.opencontainers.image.title=sidecar        # set by both stages of the Dockerfile
TOKEN_IN=/etc/sidecar/token          # where the container reads its token (as in deploy/kubernetes)
START_DEADLINE_S=120                 # container start -> health SERVING
STOP_TIMEOUT_S=30                    # podman stop -t: SIGTERM, then SIGKILL after this

T0=$(date +%s.%N)
TOKEN_DIR=""
PODMAN_READY=""
declare -a TIMINGS=()

CHECKS=0
die() { echo "container-test: FAIL: $*" >&2; exit 1; }
ok() { CHECKS=$((CHECKS + 1)); echo "ok $CHECKS: $*"; }
step() { printf '\n== %s\n' "$*"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
timing() { TIMINGS+=("$(printf '%-40s %6s s' "$1" "$2")"); }

cleanup() {
    local rc=$?
    trap - ERR
    if [[ -n $PODMAN_READY ]] && podman container exists "$NAME" 2>/dev/null; then
        if ((rc != 0)); then
            echo "--- last lines of the container's log ---" >&2
            podman logs --tail 40 "$NAME" 2>&1 | sed 's/^/    /' >&2 || true
        fi
        podman kill "$NAME" >/dev/null 2>&1 || true
        podman rm -f -v "$NAME" >/dev/null 2>&1 \
            || echo "container-test: warning: could not remove container $NAME" >&2
    fi
    [[ -z $TOKEN_DIR ]] || rm -rf "$TOKEN_DIR"
    if ((rc != 0)); then
        echo "container-test: FAILED (exit $rc)" >&2
        echo "container-test: $CHECKS passed, 1 failed"
    fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- preconditions
step "preconditions"
[[ $(id -u) == 0 ]] || die "run as root: this script uses rootful podman"
[[ -x $PY && -x $SIDECAR ]] \
    || die "$ROOT/.venv is missing: run 'make test' first (it creates .venv with tritonclient and the sidecar)"
"$PY" -c 'import numpy, onnx, tritonclient.grpc' \
    || die ".venv lacks tritonclient/onnx/numpy: run 'make test' first"
[[ -s $HOST_CA ]] || die "host CA bundle $HOST_CA missing: pip inside the build cannot verify PyPI"
[[ -d examples/models/tiny/1 && -d examples/models/tiny/2 ]] || die "examples/models/tiny/{1,2} missing"
echo "checkout $ROOT, host client $PY"

# ---------------------------------------------------------------- 1. install
step "1. podman, runc, catatonit, debootstrap"
t=$(now)
missing=()
for pkg in podman runc catatonit debootstrap; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "apt-get not found: cannot install ${missing[*]}"
    echo "installing: ${missing[*]}"
    apt-get update -q >"/tmp/container-test-apt.log" 2>&1 \
        || { tail -20 /tmp/container-test-apt.log >&2; die "apt-get update failed (log above)"; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        >>"/tmp/container-test-apt.log" 2>&1 \
        || { tail -20 /tmp/container-test-apt.log >&2; die "apt-get install ${missing[*]} failed (log above)"; }
    timing "install ${missing[*]}" "$(secs "$t")"
else
    echo "already installed"
    timing "install (already installed)" "$(secs "$t")"
fi
podman --version

# ---------------------------------------------------------------- 2. podman, work dir
step "2. podman (normal storage), work dir $PW"
mkdir -p "$PW"
exec 9>"$PW/lock"
flock -w 1800 9 || die "another container test has held $PW/lock for 30 minutes"
podman info --format 'storage {{.Store.GraphDriverName}} {{.Store.GraphRoot}}, runtime {{.Host.OCIRuntime.Name}}, cgroups {{.Host.CgroupManager}}' \
    || die "podman info failed: podman cannot run here"
PODMAN_READY=1
# podman gives containers nofile and nproc limits above this machine's hard limits,
# and root lacks CAP_SYS_RESOURCE: a plain `podman run` fails here ("error setting
# rlimit type 7"). The run below asks for less: nofile at the hard limit and nproc at
# 32768 (runc refused 40000 here, though the shell's hard limit is 96365).
ULIMITS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=32768:32768")

# ---------------------------------------------------------------- 3. base image
step "3. base image $BASE_IMAGE"
t=$(now)
if podman image exists "$BASE_IMAGE"; then
    echo "present (reused)"
    timing "base image (reused)" "$(secs "$t")"
elif [[ -n ${SIDECAR_BASE_IMAGE:-} ]]; then
    echo "pulling $BASE_IMAGE"
    podman pull "$BASE_IMAGE" || die "cannot pull $BASE_IMAGE"
    timing "base image (pulled)" "$(secs "$t")"
else
    echo "no registry here: building a local stand-in for python:3.11-slim (Debian bookworm's Python 3.11)"
    if ! podman image exists "$DEBIAN"; then
        mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
        [[ -n $mirror ]] || mirror=$(awk '/^deb / { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
        [[ -n $mirror ]] || die "cannot find the Debian mirror apt uses (debian.sources / sources.list)"
        rm -rf "$PW/rootfs"
        echo "debootstrap bookworm from $mirror"
        debootstrap --variant=minbase --include=ca-certificates bookworm "$PW/rootfs" "$mirror" \
            >"$PW/debootstrap.log" 2>&1 \
            || { tail -20 "$PW/debootstrap.log" >&2; die "debootstrap failed (log: $PW/debootstrap.log)"; }
        rm -rf "$PW"/rootfs/var/cache/apt/archives/*.deb "$PW"/rootfs/var/lib/apt/lists/*
        tar -C "$PW/rootfs" -c . | podman import --change 'CMD ["bash"]' - "$DEBIAN" >/dev/null
        rm -rf "$PW/rootfs"
    fi
    mkdir -p "$PW/py"
    # What the Dockerfile needs of python:3.11-slim: `python` 3.11 with venv, a shell,
    # groupadd/useradd and a CA bundle at /etc/ssl/certs/ca-certificates.crt.
    cat >"$PW/py/Containerfile" <<EOF
FROM $DEBIAN
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv python3-pip python-is-python3 \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /usr/lib/python3.11/EXTERNALLY-MANAGED \\
 && for b in python python3 pip pip3; do ln -s /usr/bin/\$b /usr/local/bin/\$b; done
ENV LANG=C.UTF-8 PYTHON_VERSION=3.11.2
CMD ["python3"]
EOF
    podman build -q -t "$BASE_IMAGE" "$PW/py" >/dev/null || die "building the $BASE_IMAGE stand-in failed"
    timing "base image (stand-in created)" "$(secs "$t")"
fi
base_bytes=$(podman image inspect --format '{{.Size}}' "$BASE_IMAGE")

# ---------------------------------------------------------------- 4. build
step "4. build $IMAGE"
t=$(now)
old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
BUILD=(podman build --format docker --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE")
# Here only: PyPI's TLS is intercepted, so the build verifies it with the host's bundle.
PROXY_CA=(-v "$HOST_CA:/etc/ssl/certs/ca-certificates.crt:ro")
echo "${BUILD[*]} ${PROXY_CA[*]} ."
"${BUILD[@]}" "${PROXY_CA[@]}" . 2>&1 | tee "$PW/build.log" | sed 's/^/    /'
new_id=$(podman image inspect --format '{{.Id}}' "$IMAGE") || die "the build produced no $IMAGE"
ok "image built from the checkout with the README's command"
if [[ -n $old_id && $old_id != "$new_id" ]]; then
    podman rmi "$old_id" >/dev/null 2>&1 \
        && echo "removed the previous build ${old_id:0:12}" \
        || echo "note: previous build ${old_id:0:12} kept (still in use)"
fi
# Untagged images of earlier builds of this Dockerfile (both stages carry its label)
# that this build neither made nor reused: removed, leaves first. The ones it used
# stay, as the layer cache of the next run (a warm rebuild takes seconds).
used=$(sed -nE 's/^--> (Using cache )?([0-9a-f]{11}).*/\2/p' "$PW/build.log" | sort -u)
removed=0
while :; do
    progress=0
    for id in $(podman images -a --noheading --filter "label=$LABEL" --format '{{.ID}} {{.Repository}}' \
                | awk '$2 == "<none>" { print $1 }'); do
        grep -qx "${id:0:11}" <<<"$used" && continue
        if podman rmi "$id" >/dev/null 2>&1; then progress=1; removed=$((removed + 1)); fi
    done
    ((progress)) || break
done
((removed == 0)) || echo "removed $removed untagged images of earlier builds"
timing "build" "$(secs "$t")"
size_bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
mb() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1e6 }'; }
image_mb=$(mb "$size_bytes"); base_mb=$(mb "$base_bytes"); own_mb=$(mb "$((size_bytes - base_bytes))")
podman images "$IMAGE"
[[ $(podman images --quiet "$IMAGE") ]] || die "plain \`podman images $IMAGE\` does not list the image"
ok "\`podman images\` lists it: $image_mb MB = base $base_mb MB + $own_mb MB of its own"

# ---------------------------------------------------------------- 5. run
step "5. run"
TOKEN_DIR=$(mktemp -d "$PW/token.XXXXXX")
chmod 0755 "$TOKEN_DIR"
head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$TOKEN_DIR/token"
printf 'not-the-token\n' >"$TOKEN_DIR/wrong"
chmod 0644 "$TOKEN_DIR/token" "$TOKEN_DIR/wrong"     # the container's uid 10001 must read it

t=$(now)
# No --init: like a Kubernetes pod, `sidecar serve` is PID 1 and handles SIGTERM itself.
# The image's HEALTHCHECK is run by hand below (`podman healthcheck run`): podman 4.3 also
# tries to give it a systemd timer, and there is no systemd here (that error is filtered).
podman run -d --name "$NAME" --pull=never "${ULIMITS[@]}" \
    --read-only --read-only-tmpfs=false \
    --cap-drop=ALL --security-opt=no-new-privileges \
    -p 127.0.0.1::8001 -p 127.0.0.1::8002 -p 127.0.0.1::8003 \
    -v "$ROOT/examples/models:/models:ro" \
    -v "$TOKEN_DIR/token:$TOKEN_IN:ro" \
    -e SIDECAR_CONTROL_TOKEN_FILE="$TOKEN_IN" \
    -e SIDECAR_CONTROL_LISTEN=0.0.0.0:8002 \
    "$IMAGE" >/dev/null 2>"$PW/run.err" \
    || { cat "$PW/run.err" >&2; die "podman run failed"; }
grep -v 'unable to get systemd connection' "$PW/run.err" >&2 || true
GRPC=$(podman port "$NAME" 8001/tcp)
CTL=$(podman port "$NAME" 8002/tcp)
METRICS=$(podman port "$NAME" 8003/tcp)
[[ -n $GRPC && -n $CTL && -n $METRICS ]] || die "podman port gave no host ports"
echo "container $NAME: inference $GRPC, control $CTL, metrics $METRICS"

# Wait for a condition of another process (the server's health), with a deadline.
deadline=$((SECONDS + START_DEADLINE_S))
until "$SIDECAR" probe --address "$GRPC" --timeout 2 >/dev/null 2>&1; do
    state=$(podman inspect --format '{{.State.Status}}' "$NAME")
    if [[ $state != running ]]; then
        die "container is '$state' (exit code $(podman inspect --format '{{.State.ExitCode}}' "$NAME")) before health was SERVING"
    fi
    ((SECONDS < deadline)) || die "health of $GRPC not SERVING ${START_DEADLINE_S}s after start"
    sleep 0.2
done
start_s=$(secs "$t")
timing "start -> health SERVING (host)" "$start_s"
ok "health \"\" SERVING from the host ${start_s}s after podman run"
for model in tiny text; do
    "$SIDECAR" probe --address "$GRPC" --service "$model" >/dev/null \
        || die "health service $model is not SERVING"
done
ok "health services tiny and text SERVING"

# ---------------------------------------------------------------- 6. behave
step "6. inference, rollback, auth, metrics (from the host)"
infer() {  # infer EXPECTED_TINY_VERSION
    "$PY" - "$GRPC" "$1" <<'EOF'
import sys

sys.path.insert(0, "examples")
import numpy as np
import tritonclient.grpc as tc
from make_models import tiny_weights

address, version = sys.argv[1], int(sys.argv[2])
x = (np.arange(8, dtype=np.float32).reshape(2, 4) - 3.5) / 2
weights = {v: tiny_weights(v) for v in (1, 2)}
expected = {v: x @ w + b for v, (w, b) in weights.items()}
assert not np.allclose(expected[1], expected[2]), "versions 1 and 2 compute the same values"

client = tc.InferenceServerClient(address)
tensor = tc.InferInput("INPUT0", [2, 4], "FP32")
tensor.set_data_from_numpy(x)
result = client.infer("tiny", [tensor], request_id="container-test")
got = result.as_numpy("OUTPUT0")
served = result.get_response().model_version
if served != str(version) or not np.allclose(got, expected[version], rtol=1e-5, atol=1e-5):
    sys.exit(f"tiny: expected version {version} {expected[version].tolist()}, "
             f"got version {served} {got.tolist()}")
print(f"tiny answered version {served}: {np.round(got, 4).tolist()} (version {version}'s values)")

text = tc.InferInput("TEXT", [2], "BYTES")
text.set_data_from_numpy(np.array([b"hello", b"world"], dtype=object))
upper = client.infer("text", [text]).as_numpy("UPPER").tolist()
if upper != [b"HELLO", b"WORLD"]:
    sys.exit(f"text: expected [b'HELLO', b'WORLD'], got {upper}")
print(f"text answered {upper}")
EOF
}
ctl() {  # ctl ARGS...: sidecar ctl against the container, with the token, no token from the env
    env -u SIDECAR_CONTROL_TOKEN -u SIDECAR_CTL_TOKEN_FILE -u SIDECAR_CTL_ADDRESS \
        "$SIDECAR" ctl --address "$CTL" "$@"
}
active_of() {  # active_of MODEL: its active version number, from `ctl --json models`
    ctl --token-file "$TOKEN_DIR/token" --json models \
        | "$PY" -c 'import json, sys; print([m for m in json.load(sys.stdin)["models"] if m["name"] == sys.argv[1]][0]["active"]["number"])' "$1"
}

infer 2
ok "inference: tiny version 2's values, text upper-cased"
[[ $(active_of tiny) == 2 ]] || die "ctl models: tiny's active version is not 2 at start"
ok "ctl models (token): tiny active version 2"

t=$(now)
ctl --token-file "$TOKEN_DIR/token" --json rollback tiny --reason "container test" >/dev/null \
    || die "sidecar ctl rollback tiny (with the token) failed"
timing "ctl rollback (host, incl. CLI start)" "$(secs "$t")"
[[ $(active_of tiny) == 1 ]] || die "ctl models: tiny's active version is not 1 after the rollback"
ok "ctl rollback tiny (token): tiny active version 1"
infer 1
ok "inference after the rollback: tiny version 1's values"

rc=0; out=$(ctl models 2>&1) || rc=$?
[[ $rc == 6 && $out == *UNAUTHENTICATED* ]] \
    || die "ctl without a token: expected exit 6 UNAUTHENTICATED, got exit $rc: $out"
ok "without the token: refused (exit $rc): $out"
rc=0; out=$(ctl --token-file "$TOKEN_DIR/wrong" rollback tiny 2>&1) || rc=$?
[[ $rc == 6 && $out == *PERMISSION_DENIED* ]] \
    || die "ctl with a wrong token: expected exit 6 PERMISSION_DENIED, got exit $rc: $out"
ok "with a wrong token: refused (exit $rc): $out"
[[ $(active_of tiny) == 1 ]] || die "a refused rollback changed tiny's active version"
ok "the refused rollback changed nothing"

"$PY" - "$METRICS" <<'EOF'
import sys
import urllib.request

with urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5) as reply:
    body = reply.read().decode()
    status = reply.status
names = sorted({line.split("{")[0].split(" ")[0] for line in body.splitlines()
                if line.startswith("sidecar_")})
if status != 200 or not names:
    sys.exit(f"/metrics: status {status}, no sidecar_* samples")
print(f"/metrics: {status}, {len(body)} bytes, {len(names)} sidecar_* series names")
EOF
ok "metrics endpoint answers on the published 8003"

step "6b. inside the container"
podman healthcheck run "$NAME" >/dev/null \
    || die "the image's HEALTHCHECK (sidecar probe) did not report healthy"
ok "the image's HEALTHCHECK (sidecar probe): healthy"
uid=$(podman exec "$NAME" id -u)
[[ $uid == 10001 ]] || die "runs as uid $uid, not 10001"
ok "runs as uid $uid"
if podman exec "$NAME" sh -c 'touch /.rw-test' 2>/dev/null; then
    die "the root filesystem is writable despite --read-only"
fi
ok "root filesystem read-only: the sidecar needs nothing writable but its state dir"
podman exec "$NAME" sh -c 'grep -q "\"tiny\"" /var/lib/sidecar/state.json' \
    || die "no /var/lib/sidecar/state.json naming tiny: the state volume is not writable"
ok "state.json written in the /var/lib/sidecar volume"
compilers=$(podman exec "$NAME" sh -c 'for c in gcc cc c++ g++ clang make; do command -v "$c" || true; done')
[[ -z $compilers ]] || die "compilers in the final image: $compilers"
ok "no compiler in the final image"
podman exec "$NAME" git --version >/dev/null || die "no git in the final image (provenance needs it)"
ok "git in the final image (a version's commit, when the repository is a git work tree)"
leftovers=$(podman exec "$NAME" sh -c 'cd /opt/venv && ls -d bin/pip* lib/python3*/site-packages/pip lib/python3*/site-packages/setuptools 2>/dev/null; find . -type d \( -name tests -o -name f2py -o -name transformers -o -name quantization \)')
[[ -z $leftovers ]] || die "the venv still holds what serving never loads: $leftovers"
ok "no pip, setuptools, test suites, f2py or onnxruntime offline tools in the venv"
venv_size=$(podman exec "$NAME" du -sh /opt/venv | cut -f1)
# What the venv holds: its biggest top-level entries, in MiB (du -sm, rounded up).
venv_top=$(podman exec "$NAME" sh -c 'cd /opt/venv/lib/python3*/site-packages && du -sm -- * | sort -rn | head -8' \
    | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 } END { print "" }')

# ---------------------------------------------------------------- memory
pid=$(podman inspect --format '{{.State.Pid}}' "$NAME")
[[ -r /proc/$pid/status ]] || die "cannot read /proc/$pid/status of the container's PID 1"
rss_kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
hwm_kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
threads=$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status")
rss_mb=$((rss_kb / 1024)); hwm_mb=$((hwm_kb / 1024))
stats=$(podman stats --no-stream --format '{{.MemUsage}}' "$NAME" 2>&1) || stats="unavailable: $stats"

# ---------------------------------------------------------------- 7. stop
step "7. stop (SIGTERM, then SIGKILL after ${STOP_TIMEOUT_S}s)"
t=$(now)
podman stop -t "$STOP_TIMEOUT_S" "$NAME" >/dev/null 2>"$PW/stop.err" \
    || { cat "$PW/stop.err" >&2; die "podman stop failed"; }
stop_s=$(secs "$t")
# podman 4.3 also tries to remove the systemd health timer (none here, see podman run).
grep -v 'unable to get systemd connection' "$PW/stop.err" >&2 || true
code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
case $code in
    0) ;;
    143) die "exit code 143: SIGTERM was not handled" ;;
    137) die "exit code 137: still running ${STOP_TIMEOUT_S}s after SIGTERM, killed" ;;
    *) die "exit code $code after SIGTERM" ;;
esac
podman logs "$NAME" 2>&1 | grep -q '"event": *"stopped"' || die "no 'stopped' line in the container's log"
timing "stop -> exit 0" "$stop_s"
ok "SIGTERM: drained and exited 0 after ${stop_s}s"

# ---------------------------------------------------------------- 8. report
step "summary"
echo "image         $IMAGE ${new_id:0:12}: $image_mb MB (base $BASE_IMAGE $base_mb MB + $own_mb MB), venv $venv_size"
echo "venv (MiB)    $venv_top"
echo "RSS serving   ${rss_mb} MiB (peak ${hwm_mb} MiB, ${threads} threads) of PID 1, tiny v1+v2 and text loaded; podman stats: $stats"
printf '%s\n' "${TIMINGS[@]}"
timing_total=$(secs "$T0")
printf '%-40s %6s s\n' total "$timing_total"
echo "container-test: $CHECKS passed, 0 failed"
