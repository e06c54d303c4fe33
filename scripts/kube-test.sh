#!/usr/bin/env bash
# Play the Kubernetes manifests of deploy/kubernetes with `podman kube play` (no
# cluster needed) and check the pod for real, as root with Debian's podman 4.3.1.
#
#   bash scripts/container-test.sh     # first: builds localhost/sidecar:latest (and the
#   bash scripts/kube-test.sh          #   Debian stand-in base); CI (.ci/run) runs both
#
# preconditions: root, podman, kubectl (kustomize built in), .venv (make test), the
#    image localhost/sidecar:latest and localhost/debian:bookworm-minbase that
#    container-test.sh builds; holds the container test's lock (its rebuild would
#    replace the image under the pod); podman's ulimits for `kube play` through
#    CONTAINERS_CONF (a file in the work dir, nothing in /etc);
# 1. images: no registry here, so stand-ins built from the Debian base (kept for
#    later runs): localhost/busybox-standin (Debian's busybox; stands in for the
#    app placeholder's docker.io/library/busybox:1.37), localhost/sidecar-models
#    (FROM the busybox stand-in, COPY examples/models: the docs' models image) and
#    localhost/git-sync-standin (git + a shell loop doing git-sync v4's publish
#    protocol; NOT git-sync, see 8);
# 2. renders overlays/podman with `kubectl kustomize`, the busybox image pointed at
#    the stand-in, plus a Secret with a random control token; validates it offline
#    against the Kubernetes schemas (kubernetes-validate, strict; `kubectl create
#    --dry-run=client` needs an API server even with --validate=false); the host
#    ports free, no pod, volume or secret of its names yet;
# 3. `podman kube play`; from the host: health "" and per model SERVING;
# 4. from the host: inference with tritonclient (tiny version 2's values, text
#    upper-cased), /metrics; in the pod (`podman exec`, as `kubectl exec` would):
#    `sidecar ctl` with the token from the Secret, refused without it and with a
#    wrong one, `ctl rollback tiny`, then version 1's values from the host;
#    state.json on the state volume says so; the app container reaches the sidecar
#    on 127.0.0.1 (busybox wget of /metrics; it has no gRPC client) and answers on
#    its own published port;
# 5. what podman made of the pod: ports published on 127.0.0.1 only (no control
#    port), uid 10001, read-only root, no capabilities, no-new-privileges,
#    seccomp, memory limit, no health check (the probes podman cannot run);
# 6. the state volume across pods: the sidecar stopped with SIGTERM (exit 0, clean
#    stop recorded: `podman kube down` alone would SIGKILL it), `podman kube down`
#    (emptyDirs go, the state claim's volume and the Secret stay), play again: the
#    new pod serves the rolled-back version 1, no crash counted;
# 7. teardown: pod, containers, volumes and the secret removed; checked;
# 8. git-sync: components/models-git-sync on overlays/podman, with the stand-in image
#    reading a bare repository the script makes on the host (hostPath, read-only),
#    its native sidecar moved to the containers (podman 4.3.1 would wait for that
#    init container to end) and --period 2s instead of 60s. Checks: the sidecar
#    serves the commit the link points at, full history (provenance of a path is
#    its own commit), files group-writable, the models mount read-only; a commit
#    of tiny version 3 on the host is served within seconds (link swapped, old
#    worktree kept), a rollback, then a new pod restores the rolled-back version
#    although version 3 is newest in git; teardown, checked;
# summary: what podman did not honour, what stays on purpose, the time of each phase.
# Any check that cannot run fails the script with a message; nothing is skipped.
# What is not checked, and why, is printed as "not checked: ...".
# (In pipelines: `grep PATTERN >/dev/null`, not `grep -q`, which stops reading at the
# first match and may leave the writer to die of SIGPIPE: a failure under pipefail.)
set -euo pipefail
set -o errtrace
on_err() { echo "kube-test: FAIL: exit $1 at line $2: ${BASH_COMMAND%%$'\n'*}" >&2; }
trap 'on_err $? $LINENO' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PW=${SIDECAR_KUBE_WORK:-/var/tmp/sidecar-kube-test}
CONTAINER_WORK=${SIDECAR_CONTAINER_WORK:-/var/tmp/sidecar-container-test}  # its lock
IMAGE=localhost/sidecar:latest                # overlays/podman's image, container-test.sh's build
DEBIAN=localhost/debian:bookworm-minbase      # container-test.sh's Debian stand-in base
BUSYBOX=localhost/busybox-standin:latest      # for docker.io/library/busybox:1.37 (the app)
MODELS_IMAGE=localhost/sidecar-models:latest  # overlays/podman's models image
GITSYNC=localhost/git-sync-standin:latest     # for registry.k8s.io/git-sync/git-sync (step 8)
OVERLAY=deploy/kubernetes/overlays/podman
GIT_COMPONENT=deploy/kubernetes/components/models-git-sync
PY=$ROOT/.venv/bin/python
SIDECAR=$ROOT/.venv/bin/sidecar
VALIDATE=$ROOT/.venv/bin/kubernetes-validate
MIN_KUBERNETES=1.27.0                         # tests/test_deploy.py's MIN_KUBERNETES
START_DEADLINE_S=120                          # play -> health SERVING
SYNC_DEADLINE_S=90                            # commit on the host -> the new version serves
STOP_TIMEOUT_S=40                             # the manifests' terminationGracePeriodSeconds
GIT_PERIOD=2s                                 # the stand-in's --period here (manifest: 60s)

T0=$(date +%s.%N)
RUN=""
PODMAN_READY=""
LEFTOVERS=$PW/leftovers                       # what a run that was killed may have left
declare -a TIMINGS=() NOTES=() PLAYED=()
POD="" CTR_SIDECAR="" CTR_APP="" CTR_GITSYNC=""

# Every podman call without fd 9, the lock: conmon, which `podman kube play` leaves
# monitoring each container, would inherit it and hold the lock as long as the pod runs.
podman() { command podman "$@" 9>&-; }

CHECKS=0
die() { echo "kube-test: FAIL: $*" >&2; exit 1; }
ok() { CHECKS=$((CHECKS + 1)); echo "ok $CHECKS: $*"; }
step() { printf '\n== %s\n' "$*"; }
note() { NOTES+=("$*"); echo "note: $*"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
timing() { TIMINGS+=("$(printf '%-44s %6s s' "$1" "$2")"); }

# ---------------------------------------------------------------- teardown helpers
# The podman objects a played YAML makes: its pods (and their containers), the
# volumes of its emptyDirs, claims and secrets (named after them), its Secrets.
# `manifest_info FILE` prints them as shell assignments (and the host ports).
manifest_info() {
    "$PY" - "$1" <<'EOF'
import shlex
import sys

import yaml

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
volumes, secrets, ports = [], [], {}
for doc in docs:
    if doc["kind"] == "Secret":
        secrets.append(doc["metadata"]["name"])
    if doc["kind"] != "Deployment":
        continue
    spec = doc["spec"]["template"]["spec"]
    for volume in spec.get("volumes", []):
        if "emptyDir" in volume:
            volumes.append(volume["name"])
        elif "persistentVolumeClaim" in volume:
            volumes.append(volume["persistentVolumeClaim"]["claimName"])
        elif "secret" in volume:
            volumes.append(volume["secret"]["secretName"])
    for container in spec["containers"]:
        for port in container.get("ports", []):
            ports[port["name"]] = f"{port.get('hostIP', '0.0.0.0')}:{port.get('hostPort', port['containerPort'])}"
state = next(v for v in spec["volumes"] if v["name"] == "state")
print(f"M_VOLUMES={shlex.quote(' '.join(volumes))}")
print(f"M_SECRETS={shlex.quote(' '.join(secrets))}")
print(f"M_STATE={shlex.quote(state.get('persistentVolumeClaim', {}).get('claimName', ''))}")
for name, address in ports.items():
    print(f"M_PORT_{name.upper()}={shlex.quote(address)}")
EOF
}

# Remove what one played YAML made; quiet; returns non-zero if something stayed.
remove_played() {  # remove_played FILE
    local file=$1 left=0 M_VOLUMES="" M_SECRETS=""
    eval "$(manifest_info "$file")"
    podman kube down "$file" >/dev/null 2>&1 || true
    for pod in $(podman pod ps --noheading --format '{{.Name}}' --filter name='^model-app-pod' 2>/dev/null); do
        podman pod rm -f "$pod" >/dev/null 2>&1 || left=1
    done
    for volume in $M_VOLUMES; do
        if podman volume exists "$volume"; then podman volume rm -f "$volume" >/dev/null 2>&1 || left=1; fi
    done
    for secret in $M_SECRETS; do
        if podman secret inspect "$secret" >/dev/null 2>&1; then podman secret rm "$secret" >/dev/null 2>&1 || left=1; fi
    done
    return $left
}

cleanup() {
    local rc=$?
    trap - ERR
    if [[ -n $PODMAN_READY ]]; then
        if ((rc != 0)); then
            for ctr in "$CTR_SIDECAR" "$CTR_GITSYNC"; do
                if [[ -z $ctr ]] || ! podman container exists "$ctr" 2>/dev/null; then continue; fi
                echo "--- last lines of $ctr's log ---" >&2
                podman logs --tail 30 "$ctr" 2>&1 | sed 's/^/    /' >&2 || true
            done
        fi
        for file in "${PLAYED[@]}"; do
            [[ -n $file ]] || continue
            if remove_played "$file"; then
                rm -f "$LEFTOVERS/$(basename "$file")"
            else
                echo "kube-test: warning: could not remove all that $file made (the next run retries)" >&2
            fi
        done
    fi
    [[ -z $RUN ]] || rm -rf "$RUN"
    if ((rc != 0)); then
        echo "kube-test: FAILED (exit $rc)" >&2
        echo "kube-test: $CHECKS passed, 1 failed"
    fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- preconditions
step "preconditions"
[[ $(id -u) == 0 ]] || die "run as root: this script uses rootful podman (as container-test.sh)"
command -v podman >/dev/null || die "podman not installed: run 'bash scripts/container-test.sh' first (it installs it)"
command -v kubectl >/dev/null || die "kubectl not found: needed for 'kubectl kustomize' (any kubectl >= 1.27)"
[[ -x $PY && -x $SIDECAR && -x $VALIDATE ]] \
    || die "$ROOT/.venv is missing or lacks kubernetes-validate: run 'make test' first"
"$PY" -c 'import numpy, onnx, tritonclient.grpc, yaml' \
    || die ".venv lacks tritonclient/onnx/numpy/yaml: run 'make test' first"
command -v git >/dev/null || die "git not found: step 8 makes a git repository on the host"
mkdir -p "$PW" "$LEFTOVERS" "$CONTAINER_WORK"
exec 9>"$CONTAINER_WORK/lock"
flock -w 1800 9 || die "another container or kube test has held $CONTAINER_WORK/lock for 30 minutes"
podman info --format 'podman {{.Version.Version}}: storage {{.Store.GraphDriverName}} {{.Store.GraphRoot}}, runtime {{.Host.OCIRuntime.Name}}, cgroups {{.Host.CgroupManager}}' \
    || die "podman info failed: podman cannot run here"
PODMAN_READY=1
podman image exists "$IMAGE" \
    || die "no image $IMAGE: run 'bash scripts/container-test.sh' first (it builds it)"
podman image exists "$DEBIAN" \
    || die "no image $DEBIAN (the Debian stand-in base): run 'bash scripts/container-test.sh' first"
echo "sidecar image $IMAGE $(podman image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-12), built $(podman image inspect --format '{{.Created}}' "$IMAGE" | cut -d. -f1)"
# podman runs containers with nofile/nproc limits above this machine's hard limits
# ("error setting rlimit type 7"); `podman run` takes --ulimit (container-test.sh),
# `podman kube play` has no such flag: its containers get these defaults instead.
# Nothing in /etc changes: CONTAINERS_CONF points podman at this file for this script.
cat >"$PW/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
EOF
[[ ! -e /etc/containers/containers.conf ]] \
    || die "/etc/containers/containers.conf exists: CONTAINERS_CONF would hide it; merge $PW/containers.conf into it and unset this check"
export CONTAINERS_CONF=$PW/containers.conf
echo "CONTAINERS_CONF=$CONTAINERS_CONF: $(grep default_ulimits "$CONTAINERS_CONF")"

# A run killed before its teardown (SIGKILL, power) leaves what it played: the copies
# of its YAML in $LEFTOVERS say what that was, so only that is removed.
for file in "$LEFTOVERS"/*.yaml; do
    [[ -e $file ]] || continue
    echo "removing what an interrupted run left ($(basename "$file"))"
    remove_played "$file" || die "could not remove what $file made: see 'podman pod ps', 'podman volume ls'"
    rm -f "$file"
done
rm -rf "$PW"/run.*                            # an interrupted run's files (the lock is ours)
RUN=$(mktemp -d "$PW/run.XXXXXX")
chmod 0755 "$RUN"

# ---------------------------------------------------------------- 1. images
step "1. images (no registry: local stand-ins from $DEBIAN)"
build_image() {  # build_image NAME CONTEXT [CONTAINERFILE]: rebuild (layer cache), drop the old one
    local name=$1 context=$2 file=${3:-$2/Containerfile} old new
    old=$(podman image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)
    podman build --pull=never -q -f "$file" -t "$name" "$context" >"$RUN/build.log" 2>&1 \
        || { tail -20 "$RUN/build.log" >&2; die "building $name failed"; }
    new=$(podman image inspect --format '{{.Id}}' "$name")
    if [[ -n $old && $old != "$new" ]]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
    echo "$name ${new:0:12}$([[ $old == "$new" ]] && echo " (unchanged)")"
}
t=$(now)
mkdir -p "$RUN/busybox" "$RUN/git-sync"
# The app placeholder runs busybox's httpd; Debian's busybox (1.35) has the applets
# (httpd, and wget for the check from inside the pod). Debian's own cp stays.
cat >"$RUN/busybox/Containerfile" <<EOF
FROM $DEBIAN
LABEL org.opencontainers.image.title=busybox-standin \\
      org.opencontainers.image.description="STAND-IN for docker.io/library/busybox (no registry here): Debian's busybox"
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends busybox \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \\
 && for applet in httpd wget; do ln -s /bin/busybox /usr/local/bin/\$applet; done
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["sh"]
EOF
build_image "$BUSYBOX" "$RUN/busybox"
# The models image of docs/kubernetes.md ("FROM busybox, COPY models /models"),
# from the stand-in: the init container runs `cp -R /models/. /mnt/models/`.
printf 'FROM %s\nCOPY models /models\n' "$BUSYBOX" >"$RUN/models.Containerfile"
build_image "$MODELS_IMAGE" examples "$RUN/models.Containerfile"

# The git-sync stand-in: NOT git-sync (registry.k8s.io/git-sync cannot be pulled
# here). It takes the flags the component uses and does what git-sync v4 does with
# them (its main.go, v4.4.2): a repository at --root, fetch of --ref (--depth, 0 =
# all, unshallowing), `git worktree add --detach` of the commit under
# .worktrees/<sha>, its .git file made relative, checkout, then a symlink
# `tmp-link` renamed over --link; the replaced worktree's mtime starts its
# --stale-worktree-timeout, after which it is deleted and pruned; --group-write =
# umask 002; --one-time; --period; --max-failures; HOME's git config as git-sync
# sets it (safe.directory *). No credentials, submodules, hooks, metrics.
cat >"$RUN/git-sync/git-sync" <<'EOF'
#!/bin/bash
# STAND-IN for git-sync v4 (scripts/kube-test.sh), not git-sync.
set -uo pipefail
repo="" ref=HEAD root=${GITSYNC_ROOT:-/git} link="" period=10s depth=1 one_time=0
stale=0 group_write=0 max_failures=0
for arg in "$@"; do
    case $arg in
        --repo=*) repo=${arg#*=} ;;
        --ref=*) ref=${arg#*=} ;;
        --root=*) root=${arg#*=} ;;
        --link=*) link=${arg#*=} ;;
        --period=*) period=${arg#*=} ;;
        --depth=*) depth=${arg#*=} ;;
        --stale-worktree-timeout=*) stale=${arg#*=} ;;
        --group-write) group_write=1 ;;
        --one-time) one_time=1 ;;
        --max-failures=*) max_failures=${arg#*=} ;;
        *) echo "git-sync stand-in: unknown flag: $arg" >&2; exit 2 ;;
    esac
done
seconds() {  # a Go duration of one unit (10s, 5m, 1h, 500ms) -> seconds
    case $1 in
        0) echo 0 ;; *ms) echo "scale=3; ${1%ms} / 1000" | bc ;; *s) echo "${1%s}" ;;
        *m) echo $((${1%m} * 60)) ;; *h) echo $((${1%h} * 3600)) ;;
        *) echo "git-sync stand-in: bad duration $1" >&2; exit 2 ;;
    esac
}
log() { echo "git-sync stand-in: $*" >&2; }
[[ -n $repo ]] || { log "--repo is required"; exit 2; }
[[ -n $link ]] || { link=${repo##*/}; link=${link%.git}; }
[[ $link == /* ]] || link=$root/$link
period_s=$(seconds "$period"); stale_s=$(seconds "$stale")
if ((group_write)); then umask 0002; else umask 0022; fi
git config --global gc.autoDetach false
git config --global gc.pruneExpire now
git config --global safe.directory '*'
trap 'log "terminated"; exit 0' TERM INT
syncs=0
sync_once() {
    mkdir -p "$root" || return 1
    if [[ ! -d $root/.git ]]; then
        git -C "$root" init -q -b git-sync || return 1
    fi
    git -C "$root" remote get-url origin >/dev/null 2>&1 \
        || git -C "$root" remote add origin "$repo" || return 1
    local current="" current_hash="" remote_hash fetch=(fetch "$repo" "$ref" --no-progress --prune --no-auto-gc)
    if [[ -L $link ]]; then
        current=$(readlink "$link"); [[ $current == /* ]] || current=$(dirname "$link")/$current
        current_hash=$(basename "$current")
    fi
    if ((depth > 0)); then
        fetch+=(--depth "$depth")
    elif [[ $(git -C "$root" rev-parse --is-shallow-repository) == true ]]; then
        fetch+=(--unshallow)
    fi
    git -C "$root" "${fetch[@]}" -q || return 1
    remote_hash=$(git -C "$root" rev-parse 'FETCH_HEAD^{}') || return 1
    local changed=0 worktree=$root/.worktrees/$remote_hash
    [[ $current_hash == "$remote_hash" && -e $worktree/.git ]] || changed=1
    if ((changed || syncs == 0)); then
        git -C "$root" reset -q --soft "$remote_hash" -- || return 1
        if ((changed)); then
            rm -rf "$worktree"; git -C "$root" worktree prune
            git -C "$root" worktree add -q --force --detach "$worktree" "$remote_hash" --no-checkout || return 1
        fi
        printf 'gitdir: %s/.git/worktrees/%s\n' "$(realpath --relative-to="$worktree" "$root")" "$remote_hash" \
            >"$worktree/.git" || return 1
        git -C "$worktree" reset -q --hard "$remote_hash" -- || return 1
        if ((changed)); then
            local dir; dir=$(dirname "$link")
            mkdir -p "$dir"
            ln -s "$(realpath --relative-to="$dir" "$worktree")" "$dir/tmp-link" || return 1
            mv -T "$dir/tmp-link" "$link" || return 1          # rename(2): the atomic swap
            [[ -z $current || ! -d $current ]] || touch "$current"   # starts its stale timer
            log "published $remote_hash (was ${current_hash:-nothing})"
        fi
        syncs=$((syncs + 1))
    fi
    # Worktrees other than the linked one, unchanged for longer than the timeout.
    local removed=0 now; now=$(date +%s)
    for old in "$root"/.worktrees/*; do
        [[ -d $old && $(basename "$old") != "$remote_hash" ]] || continue
        if (( $(echo "$now - $(stat -c %Y "$old") > $stale_s" | bc) )); then
            rm -rf "$old"; removed=$((removed + 1)); log "removed stale worktree $(basename "$old")"
        fi
    done
    if ((removed)); then
        git -C "$root" worktree prune
        git -C "$root" reflog expire --expire-unreachable=all --all
    fi
    return 0
}
failures=0
while :; do
    if sync_once; then
        failures=0
    else
        failures=$((failures + 1))
        log "sync failed ($failures in a row)"
        if ((max_failures >= 0 && failures > max_failures)); then exit 1; fi
    fi
    ((one_time)) && exit $((failures > 0))
    sleep "$period_s" & wait $!
done
EOF
chmod 0755 "$RUN/git-sync/git-sync"
cat >"$RUN/git-sync/Containerfile" <<EOF
FROM $DEBIAN
LABEL org.opencontainers.image.title=git-sync-standin \\
      org.opencontainers.image.description="STAND-IN for registry.k8s.io/git-sync/git-sync v4 (scripts/kube-test.sh): git and a shell loop doing its publish protocol"
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends git bc \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
COPY git-sync /git-sync
# As the real image: HOME=/tmp (the component mounts an emptyDir there), root /git.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp GITSYNC_ROOT=/git
USER 65533:65533
ENTRYPOINT ["/git-sync"]
EOF
build_image "$GITSYNC" "$RUN/git-sync"
ok "stand-in images built from $DEBIAN: $BUSYBOX, $GITSYNC; models image $MODELS_IMAGE (examples/models)"
timing "images (stand-ins, models)" "$(secs "$t")"

# ---------------------------------------------------------------- 2. render
step "2. render $OVERLAY (kubectl kustomize), validate offline"
TOKEN=$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
secret_doc() {  # the control token Secret (the manifests hold none; kubectl create secret ... on a cluster)
    printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: sidecar-control-token\ntype: Opaque\ndata:\n  token: %s\n' \
        "$(printf %s "$TOKEN" | base64 -w0)"
}
# kubectl kustomize of a kustomization made here: the directories given as
# resources and components (relative paths), the app's busybox pointed at the stand-in.
render() {  # render OUT "resources: [...]" "components: [...]" [images lines]
    local out=$1 dir; dir=$(mktemp -d "$RUN/kustomize.XXXXXX")
    {
        echo "apiVersion: kustomize.config.k8s.io/v1beta1"
        echo "kind: Kustomization"
        echo "$2"
        echo "$3"
        echo "images:"
        echo "  - {name: docker.io/library/busybox, newName: ${BUSYBOX%:*}, newTag: ${BUSYBOX##*:}}"
        echo "${4:-}"
    } >"$dir/kustomization.yaml"
    kubectl kustomize "$dir" >"$out" || die "kubectl kustomize failed for $(grep -E 'resources|components' "$dir/kustomization.yaml" | tr '\n' ' ')"
}
rel() { realpath --relative-to="$1" "$ROOT/$2"; }
t=$(now)
kubectl kustomize "$OVERLAY" >"$RUN/overlay.yaml" || die "kubectl kustomize $OVERLAY failed"
grep -q 'image: docker.io/library/busybox:1.37' "$RUN/overlay.yaml" \
    || die "$OVERLAY no longer uses docker.io/library/busybox:1.37 for the app: update this script"
render "$RUN/model-app.yaml" "resources: [$(rel "$RUN/x" "$OVERLAY")]" ""
"$VALIDATE" --strict --quiet -k "$MIN_KUBERNETES" "$RUN/model-app.yaml" \
    || die "the rendered manifests do not match the Kubernetes $MIN_KUBERNETES schemas"
"$VALIDATE" --strict --quiet "$RUN/model-app.yaml" \
    || die "the rendered manifests do not match the newest Kubernetes schemas kubernetes-validate knows"
ok "$OVERLAY renders and matches the Kubernetes schemas ($MIN_KUBERNETES and newest; strict, offline)"
{ cat "$RUN/model-app.yaml"; secret_doc; } >"$RUN/play.yaml"
M_VOLUMES="" M_SECRETS="" M_STATE="" M_PORT_GRPC="" M_PORT_METRICS="" M_PORT_HTTP=""
eval "$(manifest_info "$RUN/play.yaml")"
GRPC=$M_PORT_GRPC METRICS=$M_PORT_METRICS HTTP=$M_PORT_HTTP
[[ $GRPC == 127.0.0.1:* && $METRICS == 127.0.0.1:* && $HTTP == 127.0.0.1:* ]] \
    || die "the overlay must publish grpc, metrics and http on 127.0.0.1 (got $GRPC $METRICS $HTTP)"
[[ -n $M_STATE ]] || die "the overlay's state volume is not a claim (a podman named volume)"
kinds=$("$PY" -c 'import sys, yaml; print(" ".join(sorted(d["kind"] for d in yaml.safe_load_all(open(sys.argv[1])) if d)))' "$RUN/play.yaml")
echo "kinds: $kinds (podman 4.3.1 plays Deployment and Secret, skips the others with an info line)"
echo "host ports: inference $GRPC, metrics $METRICS, app $HTTP; state volume $M_STATE; volumes made: $M_VOLUMES"
for address in "$GRPC" "$METRICS" "$HTTP"; do
    [[ -z $(ss -Hltn "sport = :${address##*:}") ]] || die "port ${address##*:} is in use: change the hostPorts in $OVERLAY/podman.yaml"
done
for volume in $M_VOLUMES; do
    ! podman volume exists "$volume" || die "a podman volume '$volume' exists and is not from this script: remove it (podman volume rm $volume) first"
done
for secret in $M_SECRETS; do
    ! podman secret inspect "$secret" >/dev/null 2>&1 || die "a podman secret '$secret' exists and is not from this script: remove it first"
done
[[ -z $(podman pod ps --noheading --filter name='^model-app-pod' --format '{{.Name}}') ]] \
    || die "a pod model-app-pod... exists: not from this script, remove it first"
ok "host ports free; no pod, volume or secret of these names yet"
timing "render, validate" "$(secs "$t")"

# ---------------------------------------------------------------- play helpers
play() {  # play FILE: podman kube play, then POD and the container names
    local file=$1 out
    cp "$file" "$LEFTOVERS/$(basename "$file")"
    PLAYED+=("$file")
    out=$(podman kube play "$file" 2>"$RUN/play.err") || {
        cat "$RUN/play.err" >&2; echo "$out" >&2; die "podman kube play $file failed"; }
    # 4.3.1 removes a finished "once" init container, then fails to remove it from its
    # pod's record a second time and logs that as an error: harmless, filtered.
    grep -v 'from database: no container with ID .* found in DB' "$RUN/play.err" >&2 || true
    local pod_id; pod_id=$(awk '/^Pod:/ { getline; print; exit }' <<<"$out")
    [[ -n $pod_id ]] || { echo "$out" >&2; die "podman kube play printed no pod"; }
    POD=$(podman pod inspect --format '{{.Name}}' "$pod_id")
    CTR_SIDECAR=$POD-sidecar CTR_APP=$POD-app
    echo "pod $POD: $(podman ps -a --filter pod="$pod_id" --format '{{.Names}}={{.State}}' | tr '\n' ' ')"
}
wait_serving() {  # health "" SERVING at $GRPC from the host, the sidecar running meanwhile
    local t0=$1 deadline=$((SECONDS + START_DEADLINE_S)) state
    until "$SIDECAR" probe --address "$GRPC" --timeout 2 >/dev/null 2>&1; do
        state=$(podman inspect --format '{{.State.Status}}' "$CTR_SIDECAR" 2>/dev/null || echo missing)
        [[ $state == running ]] || die "container $CTR_SIDECAR is '$state' before health was SERVING"
        ((SECONDS < deadline)) || die "health of $GRPC not SERVING ${START_DEADLINE_S}s after the play"
        sleep 0.2
    done
    START_S=$(secs "$t0")
}
ctl() { podman exec "$CTR_SIDECAR" sidecar ctl "$@"; }   # as kubectl exec -c sidecar: token from the Secret
active_of() {  # active_of MODEL: its active version, `sidecar ctl --json models` in the pod
    ctl --json models \
        | "$PY" -c 'import json, sys; print([m for m in json.load(sys.stdin)["models"] if m["name"] == sys.argv[1]][0]["active"]["number"])' "$1"
}
infer() {  # infer EXPECTED_TINY_VERSION: from the host, through the published port
    "$PY" - "$GRPC" "$1" <<'EOF'
import sys

sys.path.insert(0, "examples")
import numpy as np
import tritonclient.grpc as tc
from make_models import tiny_weights

address, version = sys.argv[1], int(sys.argv[2])
x = (np.arange(8, dtype=np.float32).reshape(2, 4) - 3.5) / 2
expected = {v: x @ w + b for v, (w, b) in ((v, tiny_weights(v)) for v in (1, 2, 3))}
others = [v for v in expected if v != version]
assert not any(np.allclose(expected[version], expected[v]) for v in others), "versions alike"

client = tc.InferenceServerClient(address)
tensor = tc.InferInput("INPUT0", [2, 4], "FP32")
tensor.set_data_from_numpy(x)
result = client.infer("tiny", [tensor], request_id="kube-test")
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
EOF
}
state_says() {  # state_says MODEL VERSION REPOSITORY: state.json on the claim's volume, read from the host
    local dir; dir=$(podman volume inspect --format '{{.Mountpoint}}' "$M_STATE")
    "$PY" - "$dir" "$@" <<'EOF'
import json
import sys
from pathlib import Path

directory, model, version, repository = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
state = json.loads((directory / "state.json").read_text())
active = state["models"][model]["active"]["number"]
if active != version or state["repository"] != repository:
    sys.exit(f"state.json: {model} active {active}, repository {state['repository']!r}; "
             f"expected {version}, {repository!r}")
events = (directory / "events.jsonl").read_text().splitlines()
print(f"{directory}/state.json: {model} active {active} (repository {repository}); "
      f"events.jsonl {len(events)} lines")
EOF
}
serving_record() {  # serving_record stopped|running: the crash-loop guard's serving.json
    # stopped: the last end was a clean stop; both: no crash counted for any version.
    local dir; dir=$(podman volume inspect --format '{{.Mountpoint}}' "$M_STATE")
    "$PY" - "$dir/serving.json" "$1" <<'EOF'
import json
import sys

serving = json.load(open(sys.argv[1]))
crashes = {digest[:12]: c["count"] for digest, c in serving.get("crashes", {}).items() if c["count"]}
if crashes or (sys.argv[2] == "stopped" and serving.get("clean") is not True):
    sys.exit(f"serving.json: clean={serving.get('clean')}, crashes {crashes}")
EOF
}
stop_sidecar() {  # SIGTERM, the manifests' grace period; exit 0 and a clean stop recorded
    local t0; t0=$(now)
    podman stop -t "$STOP_TIMEOUT_S" "$CTR_SIDECAR" >/dev/null 2>"$RUN/stop.err" \
        || { cat "$RUN/stop.err" >&2; die "podman stop $CTR_SIDECAR failed"; }
    local code; code=$(podman inspect --format '{{.State.ExitCode}}' "$CTR_SIDECAR")
    [[ $code == 0 ]] || die "$CTR_SIDECAR exited $code after SIGTERM (143: not handled, 137: killed)"
    podman logs "$CTR_SIDECAR" 2>&1 | grep '"event": *"stopped"' >/dev/null || die "no 'stopped' line in $CTR_SIDECAR's log"
    serving_record stopped || die "serving.json does not record a clean stop"
    STOP_S=$(secs "$t0")
}
kube_down() {  # kube_down FILE: podman kube down; the pod and its emptyDir volumes go
    local file=$1 since; since=$(date --iso-8601=seconds)
    podman kube down "$file" >"$RUN/down.out" 2>&1 || { cat "$RUN/down.out" >&2; die "podman kube down failed"; }
    ! podman pod exists "$POD" || die "pod $POD still there after podman kube down"
    [[ -z $(podman ps -a --noheading --filter name="^$POD-" --format '{{.Names}}') ]] \
        || die "containers of $POD left after podman kube down"
    DOWN_EXITS=$(podman events --stream=false --since "$since" --filter event=died \
        --format '{{.Name}}={{.ContainerExitCode}}' | { grep "^$POD-" || true; } | sort -u | tr '\n' ' ')
}
remaining() {  # the volumes and secrets of the played YAML that exist
    local left=()
    for volume in $M_VOLUMES; do ! podman volume exists "$volume" || left+=("volume:$volume"); done
    for secret in $M_SECRETS; do ! podman secret inspect "$secret" >/dev/null 2>&1 || left+=("secret:$secret"); done
    echo "${left[*]}"
}
teardown() {  # teardown FILE: the pod, then the volumes and secrets it made; nothing left
    local file=$1
    if podman pod exists "$POD"; then kube_down "$file"; fi
    for volume in $M_VOLUMES; do ! podman volume exists "$volume" || podman volume rm "$volume" >/dev/null; done
    for secret in $M_SECRETS; do ! podman secret inspect "$secret" >/dev/null 2>&1 || podman secret rm "$secret" >/dev/null; done
    [[ -z $(remaining) ]] || die "left after teardown: $(remaining)"
    [[ -z $(podman pod ps --noheading --filter name='^model-app-pod' --format '{{.Name}}') ]] || die "a pod is left"
    [[ -z $(podman ps -a --noheading --filter name='^model-app-pod' --format '{{.Names}}') ]] || die "a container is left"
    PLAYED=("${PLAYED[@]/$file}")
    rm -f "$LEFTOVERS/$(basename "$file")"
}

# ---------------------------------------------------------------- 3. play
step "3. podman kube play"
t=$(now)
play "$RUN/play.yaml"
wait_serving "$t"
timing "play -> health SERVING (host)" "$START_S"
ok "health \"\" SERVING from the host at $GRPC ${START_S}s after the play"
for model in tiny text; do
    "$SIDECAR" probe --address "$GRPC" --service "$model" >/dev/null || die "health service $model is not SERVING"
done
ok "health services tiny and text SERVING"
podman exec "$CTR_SIDECAR" sh -c 'test -f /models/tiny/2/model.onnx && test -f /models/text/1/model.onnx' \
    || die "the models init container did not fill /models"
ok "the models init container copied the repository into the emptyDir (it ran once and was removed)"

# ---------------------------------------------------------------- 4. behave
step "4. inference (host), control (in the pod), the app"
infer 2
ok "inference from the host: tiny version 2's values, text upper-cased"
[[ $(active_of tiny) == 2 ]] || die "ctl models in the pod: tiny's active version is not 2 at start"
ok "sidecar ctl models in the pod (token from the Secret): tiny active version 2"
token_file=$(podman exec "$CTR_SIDECAR" cat /etc/sidecar/token)
if [[ $token_file == "$(printf %s "$TOKEN" | base64 -w0)" ]]; then
    note "the Secret's file holds the base64 text of data.token, not the decoded token (podman 4.3.1); the server and ctl read the same file, so it matches"
elif [[ $token_file == "$TOKEN" ]]; then
    echo "the Secret's file holds the decoded token"
else
    die "the token file in the pod is neither the token nor its base64 text"
fi
rc=0; out=$(podman exec "$CTR_SIDECAR" env -u SIDECAR_CTL_TOKEN_FILE sidecar ctl models 2>&1) || rc=$?
[[ $rc == 6 && $out == *UNAUTHENTICATED* ]] || die "ctl without a token: expected exit 6 UNAUTHENTICATED, got $rc: $out"
ok "ctl without the token: refused (exit $rc, UNAUTHENTICATED)"
rc=0; out=$(podman exec -e SIDECAR_CONTROL_TOKEN=not-the-token "$CTR_SIDECAR" \
    env -u SIDECAR_CTL_TOKEN_FILE sidecar ctl rollback tiny 2>&1) || rc=$?
[[ $rc == 6 && $out == *PERMISSION_DENIED* ]] || die "ctl with a wrong token: expected exit 6 PERMISSION_DENIED, got $rc: $out"
ok "ctl with a wrong token: refused (exit $rc, PERMISSION_DENIED)"
t=$(now)
out=$(ctl rollback tiny --reason "kube test") || die "sidecar ctl rollback tiny in the pod failed"
timing "ctl rollback (podman exec, incl. CLI start)" "$(secs "$t")"
echo "$out"
[[ $(active_of tiny) == 1 ]] || die "tiny's active version is not 1 after the rollback"
ok "sidecar ctl rollback tiny: tiny active version 1"
infer 1
ok "inference from the host after the rollback: tiny version 1's values"
state_says tiny 1 /models
ok "state.json on the state volume ($M_STATE) records tiny version 1 active"
"$PY" - "$METRICS" <<'EOF'
import sys
import urllib.request

with urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5) as reply:
    body = reply.read().decode()
if reply.status != 200 or "sidecar_" not in body:
    sys.exit(f"/metrics: status {reply.status}, no sidecar_* samples")
EOF
ok "/metrics answers from the host at $METRICS"
[[ $(podman inspect --format '{{.State.Status}}' "$CTR_APP") == running ]] || die "the app container is not running"
podman exec "$CTR_APP" wget -q -O - http://127.0.0.1:8003/metrics | grep '^sidecar_build_info' >/dev/null \
    || die "the app container cannot reach the sidecar's /metrics on 127.0.0.1:8003"
[[ $(podman exec "$CTR_APP" printenv MODEL_SERVER_ADDRESS) == 127.0.0.1:8001 ]] || die "the app's MODEL_SERVER_ADDRESS is not 127.0.0.1:8001"
ok "the app container runs and reaches the sidecar on 127.0.0.1 (busybox wget of :8003/metrics)"
echo "not checked: a gRPC call from the app container (the placeholder app, busybox, has no gRPC client; the host made them through the same pod network)"
status=$("$PY" -c '
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(f"http://{sys.argv[1]}/", timeout=5).status)
except urllib.error.HTTPError as error:
    print(error.code)' "$HTTP")
[[ $status =~ ^[2-4][0-9][0-9]$ ]] || die "the app (busybox httpd) does not answer HTTP at $HTTP"
ok "the app's own port answers from the host at $HTTP (HTTP $status: busybox httpd, an empty /www)"

# ---------------------------------------------------------------- 5. as played
step "5. what podman made of the pod"
ports=$(podman port "$CTR_SIDECAR" | sort | tr '\n' ' ')
expected_ports="8001/tcp -> $GRPC 8003/tcp -> $METRICS 8080/tcp -> $HTTP "
[[ $ports == "$expected_ports" ]] || die "published ports: '$ports', expected '$expected_ports'"
ok "published: $ports(127.0.0.1 only; the control port 8002 not at all)"
[[ $(podman exec "$CTR_SIDECAR" id -u):$(podman exec "$CTR_APP" id -u) == 10001:10001 ]] \
    || die "the containers do not run as uid 10001 (runAsUser)"
for ctr in "$CTR_SIDECAR" "$CTR_APP"; do
    [[ $(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$ctr") == true ]] || die "$ctr: root filesystem writable"
    pid=$(podman inspect --format '{{.State.Pid}}' "$ctr")
    grep -q '^CapEff:[[:space:]]*0000000000000000$' "/proc/$pid/status" || die "$ctr: has capabilities"
    grep -q '^NoNewPrivs:[[:space:]]*1$' "/proc/$pid/status" || die "$ctr: no-new-privileges not set"
    grep -q '^Seccomp:[[:space:]]*2$' "/proc/$pid/status" || die "$ctr: no seccomp filter"
done
ok "both containers: uid 10001, read-only root, no capabilities, no-new-privileges, seccomp filter"
memory=$(podman inspect --format '{{.HostConfig.Memory}}' "$CTR_SIDECAR")
[[ $memory == $((256 * 1024 * 1024)) ]] || die "the sidecar's memory limit is $memory, not 256Mi"
ok "the sidecar's memory limit: 256Mi (resources.limits)"
health=$(podman inspect --format '{{.Config.Healthcheck}}' "$CTR_SIDECAR")
[[ $health == "<nil>" ]] || die "the sidecar has a podman health check ($health): the overlay removes its probes"
note "no probe runs under podman: the overlay removes the sidecar's (4.3.1 drops gRPC probes, ignores readiness and startup, and would run the TCP liveness probe as 'nc -z -v  0'); the image's HEALTHCHECK is not used by kube play either. Health was checked from the host instead"
stop_timeout=$(podman inspect --format '{{.Config.StopTimeout}}' "$CTR_SIDECAR")
[[ $stop_timeout != "$STOP_TIMEOUT_S" ]] \
    || die "podman took terminationGracePeriodSeconds as the stop timeout: update this script and the docs"
note "terminationGracePeriodSeconds ($STOP_TIMEOUT_S) and the preStop sleeps are not used: a plain 'podman stop' waits $stop_timeout s; the script stops the sidecar with 'podman stop -t $STOP_TIMEOUT_S'"

# ---------------------------------------------------------------- 6. state across pods
step "6. stop, podman kube down, play again: the state volume"
stop_sidecar
timing "SIGTERM -> sidecar exit 0" "$STOP_S"
ok "the sidecar stopped on SIGTERM: exit 0, 'stopped' logged, serving.json marked clean"
t=$(now)
kube_down "$RUN/play.yaml"
timing "podman kube down" "$(secs "$t")"
echo "exit codes at kube down (after the sidecar's own stop): $DOWN_EXITS"
[[ $DOWN_EXITS == *"$CTR_APP=137"* ]] \
    && note "podman kube down (4.3.1) stops with SIGKILL at once: the app exited 137. Alone it would kill the sidecar too, and its crash-loop guard counts that (two such ends within 120 s of starts quarantine the version): stop the sidecar first (podman stop -t $STOP_TIMEOUT_S $CTR_SIDECAR)"
kept=$(remaining)
[[ $kept == *"volume:$M_STATE"* ]] || die "the state volume $M_STATE did not survive podman kube down"
for volume in $M_VOLUMES; do
    [[ $volume == "$M_STATE" || " $M_SECRETS " == *" $volume "* ]] && continue   # claim, Secret
    [[ $kept != *"volume:$volume"* ]] || die "emptyDir volume $volume outlived the pod"
done
ok "podman kube down: pod and emptyDir volumes gone; kept: $kept"
t=$(now)
play "$RUN/play.yaml"
wait_serving "$t"
timing "replay -> health SERVING (host)" "$START_S"
[[ $(active_of tiny) == 1 ]] || die "the new pod does not serve tiny version 1 (the rollback before the restart)"
podman logs "$CTR_SIDECAR" 2>&1 | grep '"event": *"restore"' | grep '"model": *"tiny"' \
    | grep 'restored the saved active version' >/dev/null || die "no 'restored the saved active version' for tiny in the new pod's log"
infer 1
serving_record running || die "the new pod counted a crash"
ok "a new pod on the same state volume restores the rollback: tiny version 1 serves, no crash counted"

# ---------------------------------------------------------------- 7. teardown
step "7. teardown"
stop_sidecar
teardown "$RUN/play.yaml"
ok "torn down: no pod, container, volume ($M_VOLUMES) or secret ($M_SECRETS) left"

# ---------------------------------------------------------------- 8. git-sync
step "8. git-sync beside the sidecar (the git-sync STAND-IN image, a local repository)"
t=$(now)
GIT_DIR_HOST=$RUN/git
mkdir -p "$GIT_DIR_HOST"
chmod 0755 "$GIT_DIR_HOST"
hostgit() { git -c user.name=kube-test -c user.email=kube-test@localhost -c init.defaultBranch=main "$@"; }
hostgit init -q --bare "$GIT_DIR_HOST/models.git"
hostgit clone -q "$GIT_DIR_HOST/models.git" "$GIT_DIR_HOST/work" 2>/dev/null
work=$GIT_DIR_HOST/work
mkdir -p "$work/tiny" "$work/text"
cp -R examples/models/tiny/1 "$work/tiny/1"
cp -R examples/models/text/1 "$work/text/1"
hostgit -C "$work" add -A && hostgit -C "$work" commit -q -m "tiny 1, text 1"
COMMIT_A=$(git -C "$work" rev-parse HEAD)
cp -R examples/models/tiny/2 "$work/tiny/2"
hostgit -C "$work" add -A && hostgit -C "$work" commit -q -m "tiny 2"
COMMIT_B=$(git -C "$work" rev-parse HEAD)
hostgit -C "$work" push -q origin HEAD:main
echo "bare repository $GIT_DIR_HOST/models.git: ${COMMIT_A:0:12} (tiny 1, text 1), ${COMMIT_B:0:12} (tiny 2) on main"

repo_line="resources: [$(rel "$RUN/x" "$OVERLAY")]"
comp_line="components: [$(rel "$RUN/x" "$GIT_COMPONENT")]"
render "$RUN/git-sync-rendered.yaml" "$repo_line" "$comp_line" \
    "  - {name: registry.k8s.io/git-sync/git-sync, newName: ${GITSYNC%:*}, newTag: ${GITSYNC##*:}}"
# For podman 4.3.1 and the stand-in (each change printed): the repository on the
# host by hostPath, read-only; --period 2s; the native sidecar as a container.
"$PY" - "$RUN/git-sync-rendered.yaml" "$RUN/git-sync.yaml" "$GIT_DIR_HOST/models.git" "$GIT_PERIOD" <<'EOF'
import sys

import yaml

source, target, bare, period = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(source)) if d]
spec = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
syncs = [c for c in spec["initContainers"] if "git-sync" in c["image"]]
assert [c["name"] for c in syncs] == ["git-sync-init", "git-sync"], [c["name"] for c in syncs]
for container in syncs:
    args = container["args"]
    repo = [i for i, a in enumerate(args) if a.startswith("--repo=")]
    assert len(repo) == 1, args
    args[repo[0]] = "--repo=file:///srv/models.git"
    container["args"] = [f"--period={period}" if a.startswith("--period=") else a for a in args]
    container["volumeMounts"].append({"name": "models-git", "mountPath": "/srv/models.git",
                                      "readOnly": True})
spec["volumes"].append({"name": "models-git", "hostPath": {"path": bare, "type": "Directory"}})
native = syncs[1]
assert native.pop("restartPolicy") == "Always"
spec["initContainers"].remove(native)
spec["containers"].append(native)
print("adapted: --repo=file:///srv/models.git (hostPath " + bare + ", read-only) in both;"
      f" git-sync: --period={period} (manifest: 60s), moved from initContainers (a native"
      " sidecar, restartPolicy Always: podman 4.3.1 would wait for it to end) to containers")
with open(target, "w") as out:
    yaml.safe_dump_all(docs, out, sort_keys=False)
EOF
"$VALIDATE" --strict --quiet -k "$MIN_KUBERNETES" "$RUN/git-sync.yaml" \
    || die "the git-sync manifests do not match the Kubernetes schemas"
if ! grep -q -- '--depth=0' "$RUN/git-sync.yaml" || ! grep -q -- '--stale-worktree-timeout=' "$RUN/git-sync.yaml"; then
    die "the component's --depth=0 / --stale-worktree-timeout did not reach the rendered YAML"
fi
{ cat "$RUN/git-sync.yaml"; secret_doc; } >"$RUN/git-sync-play.yaml"
eval "$(manifest_info "$RUN/git-sync-play.yaml")"
for volume in $M_VOLUMES; do
    ! podman volume exists "$volume" || die "a podman volume '$volume' exists before the git-sync play"
done
ok "components/models-git-sync on $OVERLAY rendered for podman and the stand-in; schemas match"
timing "git-sync: repository, render" "$(secs "$t")"

t=$(now)
play "$RUN/git-sync-play.yaml"
CTR_GITSYNC=$POD-git-sync
wait_serving "$t"
timing "git-sync play -> health SERVING (host)" "$START_S"
ok "health \"\" SERVING ${START_S}s after the play (git-sync-init synced before the sidecar started)"
link=$(podman exec "$CTR_SIDECAR" readlink /models/current)
[[ $link == ".worktrees/$COMMIT_B" ]] || die "/models/current -> '$link', expected .worktrees/$COMMIT_B"
infer 2
ok "the sidecar serves the linked commit ${COMMIT_B:0:12}: tiny version 2's values, text"
[[ $(podman exec "$CTR_GITSYNC" git -C /mnt/models rev-parse --is-shallow-repository) == false ]] \
    || die "git-sync's repository is shallow (--depth=0 should fetch the history)"
provenance=$(podman exec "$CTR_GITSYNC" git -C /mnt/models/current log -1 --format=%H -- tiny/1)
[[ $provenance == "$COMMIT_A" ]] \
    || die "git log -1 -- tiny/1 says ${provenance:0:12}, not ${COMMIT_A:0:12}: a shallow history lies"
ok "full history (--depth=0): git log -1 -- tiny/1 names ${COMMIT_A:0:12}, the commit that added it"
mode=$(podman exec "$CTR_GITSYNC" stat -c '%a %u:%g' /mnt/models/current/tiny/2/model.onnx)
[[ $mode == 664\ 10001:10001 ]] || die "tiny/2/model.onnx is '$mode', expected 664 10001:10001 (--group-write, the pod's uid/gid)"
ok "checkout files group-writable, owned by the pod's uid/gid: $mode (--group-write, fsGroup)"
if podman exec "$CTR_SIDECAR" sh -c 'touch /models/current/x' 2>/dev/null; then
    die "the sidecar can write the git-sync volume (it should mount it read-only)"
fi
[[ $(podman exec "$CTR_SIDECAR" printenv GIT_OPTIONAL_LOCKS) == 0 ]] || die "GIT_OPTIONAL_LOCKS is not 0 in the sidecar"
ok "the sidecar mounts the volume read-only; GIT_OPTIONAL_LOCKS=0 for git on its side"

t=$(now)
"$PY" - "$work" <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, "examples")
from make_models import tiny_model, write_model

write_model(tiny_model(3), Path(sys.argv[1]), "tiny", 3)
EOF
hostgit -C "$work" add -A && hostgit -C "$work" commit -q -m "tiny 3"
COMMIT_C=$(git -C "$work" rev-parse HEAD)
hostgit -C "$work" push -q origin HEAD:main
echo "pushed ${COMMIT_C:0:12} (tiny 3) to main on the host"
deadline=$((SECONDS + SYNC_DEADLINE_S))
until [[ $(active_of tiny) == 3 ]]; do
    ((SECONDS < deadline)) || die "tiny version 3 not active ${SYNC_DEADLINE_S}s after the push"
    sleep 0.5
done
sync_s=$(secs "$t")
timing "git push -> version 3 active (period $GIT_PERIOD)" "$sync_s"
link=$(podman exec "$CTR_SIDECAR" readlink /models/current)
[[ $link == ".worktrees/$COMMIT_C" ]] || die "/models/current -> '$link', expected .worktrees/$COMMIT_C"
infer 3
ctl --json events --model tiny | grep '"actor": *"watcher"' >/dev/null || die "no watcher event for tiny"
ok "a commit on the host served ${sync_s}s later: link swapped to ${COMMIT_C:0:12}, tiny version 3's values, activated by the watcher"
podman exec "$CTR_GITSYNC" test -d "/mnt/models/.worktrees/$COMMIT_B" \
    || die "the replaced worktree ${COMMIT_B:0:12} is gone at once (--stale-worktree-timeout not honoured)"
ok "the replaced worktree ${COMMIT_B:0:12} is kept (--stale-worktree-timeout)"
ctl rollback tiny --reason "kube test: git" >/dev/null || die "ctl rollback tiny failed"
[[ $(active_of tiny) == 2 ]] || die "tiny not back on version 2 after the rollback"
infer 2
state_says tiny 2 /models/current
ok "ctl rollback tiny: version 2 serves (version 3 stays in git), recorded on the state volume"
stop_sidecar
kube_down "$RUN/git-sync-play.yaml"
t=$(now)
play "$RUN/git-sync-play.yaml"
wait_serving "$t"
[[ $(podman exec "$CTR_SIDECAR" readlink /models/current) == ".worktrees/$COMMIT_C" ]] \
    || die "the new pod's checkout is not ${COMMIT_C:0:12}"
[[ $(active_of tiny) == 2 ]] || die "the new pod does not serve the rolled-back tiny version 2"
infer 2
serving_record running || die "the new pod counted a crash"
ok "a new pod (fresh checkout of ${COMMIT_C:0:12}, version 3 newest) restores the rollback: version 2 serves"
stop_sidecar
teardown "$RUN/git-sync-play.yaml"
ok "torn down: no pod, container, volume ($M_VOLUMES) or secret left"
timing "git-sync: sync, rollback, new pod, teardown" "$(secs "$t")"

# ---------------------------------------------------------------- 9. report
step "summary"
echo "what podman $(podman version --format '{{.Client.Version}}') did not honour (worked around or checked otherwise):"
printf '  - %s\n' "${NOTES[@]}"
printf '  - %s\n' \
    "restartPolicy Always reaches init containers (restarted until podman notices they ended; issue 16343, 4.4): the overlay sets OnFailure" \
    "native sidecars (init containers with restartPolicy Always): run as init containers, and the play waits for them to end (forever): the git-sync play moves git-sync to the containers" \
    "every containerPort is published (0.0.0.0, same number) unless hostPort/hostIP: the overlay sets 127.0.0.1 and its own ports" \
    "Secret volumes: items, defaultMode ignored (one file per key, 0644); optional must be explicit (false)" \
    "Services, NetworkPolicy, PodDisruptionBudget, replicas > 1 (as separate pods sharing volumes): skipped or not used"
echo "left in podman's storage on purpose (reused, like container-test.sh's base images): $BUSYBOX, $GITSYNC, $MODELS_IMAGE, localhost/podman-pause (podman's own pod infra image)"
printf '%s\n' "${TIMINGS[@]}"
printf '%-44s %6s s\n' total "$(secs "$T0")"
echo "kube-test: $CHECKS passed, 0 failed"
