#!/usr/bin/env bash
# FSDP2 on one GPU against the same stages unsharded: `--nproc 1` must match within noise.
# Runs as a scripts/h100_bg.sh job: results and logs land in $JOB, files named by $TAG
# (e.g. TAG=expandable PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True).
set -uo pipefail
stages=${STAGES:-00_sdpa 04_liger_cce_sdpa 01_kernelize_sdpa_compile}
tag=${TAG:-default}
cache=${JOB:?}/inductor
stagebench env --json > "$JOB/env-$tag.json"
for stage in $stages; do  # alternate, so a drifting machine moves both columns alike
  stagebench run "$stage" --jsonl "$JOB/single-$tag.jsonl" --log-dir "$JOB/logs-single-$tag" \
    --compile-cache "$cache"
  stagebench run "$stage" --nproc 1 --jsonl "$JOB/fsdp1-$tag.jsonl" \
    --log-dir "$JOB/logs-fsdp1-$tag" --compile-cache "$cache"
done
# Two ranks where only one GPU exists: must say unavailable, without starting anything.
stagebench run 00_sdpa --nproc 2 --jsonl "$JOB/fsdp2-$tag.jsonl"
stagebench compare "$JOB/single-$tag.jsonl" "$JOB/fsdp1-$tag.jsonl" > "$JOB/compare-$tag.md"
cat "$JOB/compare-$tag.md"
