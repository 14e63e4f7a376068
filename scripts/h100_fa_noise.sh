#!/usr/bin/env bash
# One H100 verification, run detached by scripts/h100_bg.sh (no network on the host), phases in
# order of priority, each timed into $JOB/times.tsv (phase, seconds, exit code); a phase cut by
# the machine's time limit leaves what it stored so far (every Result is appended as it ends).
#   1 flash      FlashAttention 2 and 3 built from FLASH_DIR (its build.sh)
#   2 reference  00_sdpa once: the step-0 loss every other stage is checked against
#   3 noise-fa   `stagebench noise` over the running FlashAttention rows of the seed matrix, five
#                processes each, round by round on an empty compile cache: round 1 is the
#                cold row, rounds 2-5 the warm ones (the seed table's warm column)
#   4 noise-sdpa the same for the two running SDPA rows with no five-process record yet
#   5 affinity   02_liger_sdpa five times pinned to the GPU's NUMA node (a control a user would
#                accept for the Liger rows' host-side noise), beside five unpinned, interleaved
# 01_kernelize_fa2_compile is left out: its first step recompiles every layer even warm (~300 s
# a process), so five processes would take the whole session.
#   usage: scripts/h100_fa_noise.sh FLASH_DIR   (carried flat: a carried folder travels one
#   level deep)
set -uo pipefail
flash=${1:?usage: $0 FLASH_DIR}

# shellcheck source=scripts/h100_timed.sh
source "$(dirname "$0")/h100_timed.sh"

gpu_facts
nvidia-smi topo -m > "$job/topo.txt" 2>&1

timed flash bash "$flash/build.sh"
stagebench env --json > "$job/env.json" 2>&1

timed reference stagebench run 00_sdpa --profile-steps 0 --jsonl "$job/reference.jsonl"
for f in noise-fa noise-sdpa affinity-pinned affinity-unpinned; do
    cp "$job/reference.jsonl" "$job/$f.jsonl"
done

timed noise-fa stagebench noise 03_liger_fa2_compile 05_liger_cce_fa2_compile 04_liger_cce_fa3 \
    00_fa2 00_fa3 02_liger_fa3 --runs 5 --results "$job/noise" --jsonl "$job/noise-fa.jsonl"
timed noise-sdpa stagebench noise 04_liger_cce_sdpa 05_kernelize_cce_sdpa_compile --runs 5 \
    --results "$job/noise" --jsonl "$job/noise-sdpa.jsonl"

# The CPUs nvidia-smi names as GPU 0's affinity ("0-7" or "0-7,16-23"), else no pinning phase.
cpus=$(awk '$1 == "GPU0" {for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$/ && $i ~ /-/) {print $i; exit}}' "$job/topo.txt")
echo "GPU0 CPU affinity: ${cpus:-unknown}; CPUs: $(nproc)" > "$job/affinity.txt"
# Pinning to every CPU there is changes nothing: that phase would only cost device time.
if [ -n "$cpus" ] && [ "$cpus" != "0-$(($(nproc) - 1))" ]; then
    for round in 1 2 3 4 5; do
        timed "pinned-$round" taskset -c "$cpus" stagebench run 02_liger_sdpa --profile-steps 0 \
            --jsonl "$job/affinity-pinned.jsonl"
        timed "unpinned-$round" stagebench run 02_liger_sdpa --profile-steps 0 \
            --jsonl "$job/affinity-unpinned.jsonl"
    done
fi

cat "$times"
