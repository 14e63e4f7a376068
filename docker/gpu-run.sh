#!/usr/bin/env bash
# Run a command in the stagebench GPU image with the checkout, asv results and caches mounted.
#   usage: docker/gpu-run.sh IMAGE@sha256:DIGEST COMMAND [ARG...]
# Only the variables listed below enter the container: no host environment, no tokens.
# IMAGE must be pinned by digest (a tag can be re-pushed); for a local build set
# STAGEBENCH_ALLOW_UNPINNED_IMAGE=1. STAGEBENCH_CACHE_ROOT picks the host directory of the
# inductor and hub caches: untrusted (pull-request) runs get their own.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 IMAGE@sha256:DIGEST COMMAND [ARG...]" >&2
    exit 2
fi
image="$1"
shift
if [[ ! $image =~ ^[^@[:space:]]+@sha256:[0-9a-f]{64}$ && ${STAGEBENCH_ALLOW_UNPINNED_IMAGE:-} != 1 ]]; then
    echo "$0: image '$image' is not pinned by digest (NAME@sha256:<64 hex>); set STAGEBENCH_ALLOW_UNPINNED_IMAGE=1 to run a local build" >&2
    exit 2
fi

workspace="$(pwd -P)"
cache_root="${STAGEBENCH_CACHE_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/stagebench}"
if [[ ! -d $workspace/.git || -L $workspace/.git ]]; then
    echo "$0: $workspace is not a git checkout (asv reads .git; run from the repository root)" >&2
    exit 2
fi
# The checkout may hold links (a pull request can commit .asv as one): docker would follow them
# and mount a host directory of the link's choosing, so the mounted paths must be real.
for path in .asv .asv/results; do
    if [[ -L $workspace/$path ]]; then
        echo "$0: $workspace/$path is a symbolic link; refusing to mount it" >&2
        exit 2
    fi
done
mkdir -p "$workspace/.asv/results" "$cache_root/inductor" "$cache_root/huggingface"

# Runs as the caller's uid so files written into the checkout stay removable by the runner.
# PYTHONPATH puts the checkout's stagebench ahead of the copy baked into the image, whose
# tag only follows docker/Dockerfile and the lock. asv's virtualenv environments replace
# PYTHONPATH with ASV_PYTHONPATH in their benchmark processes, its existing ones pass both on,
# so both are set (noxfile's _asv_run_commit puts a measured commit's src/ first in each). The
# full Results (status words, reasons) are stored beside asv's results, which the nightly keeps.
# .git is mounted read-only over the writable checkout: asv only reads it, and a hook or config
# written there would run on the host at the runner's next git command.
exec docker run --rm --init \
    --gpus all \
    --shm-size 16g \
    --security-opt no-new-privileges \
    --user "$(id -u):$(id -g)" \
    --env HOME=/tmp \
    --env PYTHONPATH=/workspace/src \
    --env ASV_PYTHONPATH=/workspace/src \
    --env STAGEBENCH_STORE=/workspace/.asv/results/stagebench-results.jsonl \
    --env STAGEBENCH_NOX_REUSE_SYSTEM=1 \
    --env STAGEBENCH_TRUSTED_HUB_ORGS=kernels-community \
    --env HF_HUB_DISABLE_TELEMETRY=1 \
    --env STAGEBENCH_IMAGE="$image" \
    ${STAGEBENCH_ASV_MACHINE:+--env STAGEBENCH_ASV_MACHINE="$STAGEBENCH_ASV_MACHINE"} \
    ${STAGEBENCH_LANES:+--env STAGEBENCH_LANES="$STAGEBENCH_LANES"} \
    ${STAGEBENCH_CANARY_PACKAGES:+--env STAGEBENCH_CANARY_PACKAGES="$STAGEBENCH_CANARY_PACKAGES"} \
    ${STAGEBENCH_CANARY_INDEX_URL:+--env STAGEBENCH_CANARY_INDEX_URL="$STAGEBENCH_CANARY_INDEX_URL"} \
    --volume "$workspace:/workspace" \
    --volume "$workspace/.git:/workspace/.git:ro" \
    --volume "$workspace/.asv/results:/workspace/.asv/results" \
    --volume "$cache_root/inductor:/cache/inductor" \
    --volume "$cache_root/huggingface:/cache/huggingface" \
    --workdir /workspace \
    "$image" "$@"
