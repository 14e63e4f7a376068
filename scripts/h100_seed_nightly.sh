#!/usr/bin/env bash
# One GPU verification, run detached by scripts/h100_bg.sh on the lent H100 (no network there):
#   FlashAttention 2/3 from the carried sources, then the seed matrix through the CLI ("bare")
#   and the nightly through asv, each timed, in the order PLAN gives:
#     bare-then-nightly  bare matrix on an empty compile cache, then one night through asv (warm)
#     nightly-then-bare  one night through asv on an empty cache, then the bare matrix (warm)
# Everything lands in $JOB; times in $JOB/times.tsv (phase, seconds, exit code).
#   usage: scripts/h100_seed_nightly.sh PLAN [FLASH_DIR | none]
set -uo pipefail
plan=${1:?usage: $0 bare-then-nightly|nightly-then-bare [FLASH_DIR]}
flash=${2:-.flash}
export STAGEBENCH_STORE=$PWD/.asv/results/stagebench-results.jsonl

# shellcheck source=scripts/h100_timed.sh
source "$(dirname "$0")/h100_timed.sh"

bare() {
    timed "bare-$1" stagebench matrix --subset seed --jsonl "$job/matrix-$1.jsonl" \
        --log-dir "$job/logs-$1"
}

night() {
    local origin=/tmp/stagebench-origin.git
    [ -d "$origin" ] || { git init -q --bare -b main "$origin" && git push -q "$origin" HEAD:main; }
    python3 -m stagebench.nightly restore --remote "$origin" > "$job/restore-$1.log" 2>&1
    timed "nightly-$1" python3 -m stagebench.nightly run --report "$job/report-$1"
    python3 -m stagebench.nightly store --remote "$origin" --message "night $1" \
        > "$job/store-$1.log" 2>&1
    grep -h "track_\|Setting up" "$job/nightly-$1.log" | tail -n 400 > "$job/nightly-$1-tracked.txt"
    cp .asv/results/stagebench-results.jsonl "$job/store-$1.jsonl"
    cp -r .asv/results "$job/asv-results-$1"
}

stagebench env --json > "$job/env.json" 2>&1
if [ "$flash" != none ]; then  # none: the fa2/fa3 rows are unavailable, and say so
    timed flash bash "$flash/build.sh"
    python3 -c "import flash_attn, flash_attn_interface; print(flash_attn.__version__)" \
        >> "$job/flash.log" 2>&1
fi
case $plan in
    bare-then-nightly) bare cold && night warm ;;
    nightly-then-bare) night cold && bare warm ;;
    *) echo "unknown plan $plan" >&2; exit 2 ;;
esac
cp -r .asv/results "$job/asv-results"
cp .asv/results/stagebench-results.jsonl "$job/store.jsonl" 2>/dev/null
cat "$times"
