#!/usr/bin/env bash
# One H100 verification, run detached by scripts/h100_bg.sh (no network on the host), phases in
# order of priority, each timed into $JOB/times.tsv (phase, seconds, exit code); a phase cut by
# the machine's time limit leaves what it stored so far (every Result is appended as it ends).
#   1 nightly   `python -m stagebench.nightly run` through asv on an empty compile cache: the
#               nightly's wall time against the sum of its stage processes (the bare matrix)
#   2 steps     one Liger stage with many profiled steps: where its fast and slow steps differ
#   3 bisect    `stagebench bisect-release` over carried liger-kernel wheels (CAND_DIR): a
#               status change (03_liger_sdpa_compile) and a metric (02_liger_sdpa); 0.6.5 is
#               the first release that imports under transformers 5
#   4 noise     separate processes per stage, round by round, until the machine is taken back
#   usage: scripts/h100_session.sh CAND_DIR   (liger-kernel wheels, directly in it: a carried
#   folder travels one level deep)
set -uo pipefail
cand=${1:?usage: $0 CAND_DIR}
export STAGEBENCH_STORE=$PWD/.asv/results/stagebench-results.jsonl

# shellcheck source=scripts/h100_timed.sh
source "$(dirname "$0")/h100_timed.sh"

stagebench env --json > "$job/env.json" 2>&1
gpu_facts

origin=/tmp/stagebench-origin.git
[ -d "$origin" ] || { git init -q --bare -b main "$origin" && git push -q "$origin" HEAD:main; }
python3 -m stagebench.nightly restore --remote "$origin" > "$job/restore.log" 2>&1
timed nightly python3 -m stagebench.nightly run --report "$job/report"
python3 -m stagebench.nightly store --remote "$origin" --message "night 1" > "$job/store.log" 2>&1
cp -r .asv/results "$job/asv-results"

timed steps stagebench run 02_liger_sdpa --profile-steps 20 --jsonl "$job/liger-steps.jsonl"

# The bisects keep their Results apart from the history, with the night's reference beside them.
grep '"spec": "sdpa"' "$STAGEBENCH_STORE" | grep '"status": "ok"' | tail -n 1 > "$job/bisect.jsonl"
timed bisect-status stagebench bisect-release liger-kernel 0.6.5 0.8.5 \
    --stage 03_liger_sdpa_compile --find-links "$cand" --jsonl "$job/bisect.jsonl" \
    --format md
timed bisect-metric stagebench bisect-release liger-kernel 0.6.5 0.8.5 --stage 02_liger_sdpa \
    --find-links "$cand" --jsonl "$job/bisect.jsonl" --format md

timed noise stagebench noise 01_kernelize_sdpa_compile 02_liger_sdpa 00_sdpa --runs 5 \
    --results "$job/noise" --jsonl "$job/noise-runs.jsonl"
cat "$times"
