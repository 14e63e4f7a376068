#!/usr/bin/env bash
# FSDP2 on one GPU against the same stages unsharded: `--nproc 1` must match within noise.
# Runs as a scripts/h100_bg.sh job: results and logs land in $JOB.
set -uo pipefail
stages=${STAGES:-00_sdpa 04_liger_cce_sdpa 01_kernelize_sdpa_compile}
cache=${JOB:?}/inductor
stagebench env --json > "$JOB/env.json"
for stage in $stages; do  # alternate, so a drifting machine moves both columns alike
  stagebench run "$stage" --jsonl "$JOB/single.jsonl" --log-dir "$JOB/logs-single" \
    --compile-cache "$cache"
  stagebench run "$stage" --nproc 1 --jsonl "$JOB/fsdp1.jsonl" --log-dir "$JOB/logs-fsdp1" \
    --compile-cache "$cache"
done
# Two ranks where only one GPU exists: must say unavailable, without starting anything.
stagebench run 00_sdpa --nproc 2 --jsonl "$JOB/fsdp2.jsonl"
stagebench compare "$JOB/single.jsonl" "$JOB/fsdp1.jsonl" > "$JOB/compare.md"
cat "$JOB/compare.md"
