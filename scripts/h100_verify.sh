#!/usr/bin/env bash
# Verification on a GPU host with the project's working tree: env, then the given stages.
# Usage: scripts/h100_verify.sh OUTDIR [stagebench run args...]
set -uo pipefail
out=$1; shift
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$out"
python3 -m stagebench.cli env > "$out/env.txt" 2>&1
python3 -m stagebench.cli env --json > "$out/env.json" 2>&1
python3 -m stagebench.cli "$@" --jsonl "$out/results.jsonl" --log-dir "$out/logs" 2>&1 | tee "$out/run.txt"
