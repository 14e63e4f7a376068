#!/usr/bin/env bash
# Run a command in the stagebench GPU image with the checkout, asv results and caches mounted.
#   usage: docker/gpu-run.sh IMAGE COMMAND [ARG...]
# Only the variables listed below enter the container: no host environment, no tokens.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 IMAGE COMMAND [ARG...]" >&2
    exit 2
fi
image="$1"
shift

workspace="$(pwd -P)"
cache_root="${STAGEBENCH_CACHE_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/stagebench}"
mkdir -p "$workspace/.asv/results" "$cache_root/inductor" "$cache_root/huggingface"

# Runs as the caller's uid so files written into the checkout stay removable by the runner.
# PYTHONPATH puts the checkout's stagebench ahead of the copy baked into the image, whose
# tag only follows docker/Dockerfile and the lock. asv removes PYTHONPATH's entries from its
# benchmark processes and adds ASV_PYTHONPATH's instead, so both are set. The full Results
# (status words, reasons) are stored beside asv's results, which the nightly keeps.
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
    --volume "$workspace:/workspace" \
    --volume "$workspace/.asv/results:/workspace/.asv/results" \
    --volume "$cache_root/inductor:/cache/inductor" \
    --volume "$cache_root/huggingface:/cache/huggingface" \
    --workdir /workspace \
    "$image" "$@"
