#!/usr/bin/env bash
# One H100 verification, run detached by scripts/h100_bg.sh (no network on the host), phases in
# order of priority, each timed into $JOB/times.tsv (phase, seconds, exit code); a phase cut by
# the machine's time limit leaves the Results it stored so far (each is appended as it ends), and
# `stagebench noise --from` summarizes them afterwards.
#   1 reference  00_sdpa once: the step-0 loss every other stage is checked against
#   2 noise-sdpa `stagebench noise` over the two running SDPA rows with no five-process record,
#                five processes each, round by round (the machine starts with an empty compile
#                cache, so round 1 of the first phase compiles cold; no phase empties it)
#   3 noise-k    01_kernelize_sdpa_compile again, five processes: its floor, on another instance
#   4 flash      FlashAttention 2 built from FLASH_DIR (its build.sh)
#   5 noise-kfa2 the same for 01_kernelize_fa2_compile: does its first step still recompile every
#                layer on a warm cache (307 s on 2026-11-25, before the inductor cache was chosen
#                by the parent)?
#   usage: scripts/h100_noise_rest.sh FLASH_DIR
set -uo pipefail
flash=${1:?usage: $0 FLASH_DIR}

# shellcheck source=scripts/h100_timed.sh
source "$(dirname "$0")/h100_timed.sh"

gpu_facts
stagebench env --json > "$job/env.json" 2>&1

timed reference stagebench run 00_sdpa --profile-steps 0 --jsonl "$job/reference.jsonl"
for f in noise-sdpa noise-kfa2 noise-k; do
    cp "$job/reference.jsonl" "$job/$f.jsonl"
done

timed noise-sdpa stagebench noise 04_liger_cce_sdpa 05_kernelize_cce_sdpa_compile --runs 5 \
    --results "$job/noise" --jsonl "$job/noise-sdpa.jsonl"
timed noise-k stagebench noise 01_kernelize_sdpa_compile --runs 5 \
    --results "$job/noise" --jsonl "$job/noise-k.jsonl"
timed flash bash "$flash/build.sh" fa2
stagebench env --json > "$job/env-flash.json" 2>&1
timed noise-kfa2 stagebench noise 01_kernelize_fa2_compile --runs 5 \
    --results "$job/noise" --jsonl "$job/noise-kfa2.jsonl"

cat "$times"
