#!/usr/bin/env bash
# One H100 verification, run detached by scripts/h100_bg.sh (no network on the host), phases in
# order of priority, each timed into $JOB/times.tsv (phase, seconds, exit code); a phase cut by
# the machine's time limit leaves what it stored so far (every Result is appended as it ends).
#   1 bisect-status   `stagebench bisect-release liger-kernel 0.6.5 0.8.5` on
#                 03_liger_sdpa_compile (ok with the seed's settings in August 2025,
#                 compile_error today); 0.6.5 is the first release importing under transformers 5
#   2 bisect-metric   the same range on 02_liger_sdpa's step time (the seed's 25.1% vs ~30% today)
#   3 collector   02_liger_sdpa with Python's collector as it runs, off, and frozen in the
#                 measured steps (--host-gc), interleaved round by round: is the host-side noise
#                 of the Liger stages the garbage collector?
#   4 fa-rows     FlashAttention 2 and 3 built from FLASH_DIR (its build.sh), then the seed's
#                 FlashAttention rows that lack a warm measurement, twice in a row (the second on
#                 the first one's compile cache)
# usage: scripts/h100_releases.sh CAND_DIR FLASH_DIR   (both carried flat: a carried folder
# travels one level deep)
set -uo pipefail
cand=${1:?usage: $0 CAND_DIR FLASH_DIR}
flash=${2:?usage: $0 CAND_DIR FLASH_DIR}

# shellcheck source=scripts/h100_timed.sh
source "$(dirname "$0")/h100_timed.sh"

stagebench env --json > "$job/env.json" 2>&1
gpu_facts
ls "$cand" > "$job/candidates.txt"

# One numerics reference (00_sdpa's step-0 loss) for every phase's store.
timed reference stagebench run 00_sdpa --profile-steps 0 --jsonl "$job/reference.jsonl"
for f in bisect-status bisect-metric collector fa-rows; do
    cp "$job/reference.jsonl" "$job/$f.jsonl"
done

timed bisect-status stagebench bisect-release liger-kernel 0.6.5 0.8.5 \
    --stage 03_liger_sdpa_compile --find-links "$cand" --jsonl "$job/bisect-status.jsonl" \
    --format md
# The metric phase's Results keep their profiles for --explain.
timed bisect-metric stagebench bisect-release liger-kernel 0.6.5 0.8.5 --stage 02_liger_sdpa \
    --find-links "$cand" --jsonl "$job/bisect-metric.jsonl" --format md

for round in 1 2 3 4; do
    for mode in default off freeze; do
        timed "collector-$mode-$round" stagebench run 02_liger_sdpa --host-gc "$mode" \
            --profile-steps 0 --jsonl "$job/collector.jsonl"
    done
done

timed flash bash "$flash/build.sh"
fa_rows=(03_liger_fa2_compile 04_liger_cce_fa3 05_liger_cce_fa2_compile)
timed fa-first stagebench run "${fa_rows[@]}" --jsonl "$job/fa-rows.jsonl"
timed fa-second stagebench run "${fa_rows[@]}" --jsonl "$job/fa-rows.jsonl"

cat "$times"
