#!/usr/bin/env bash
# The nightly's command sequence on a GPU host without Docker: asv on this commit in the existing
# environment, the site, then the regression report. Files for the record go to $JOB.
set -uo pipefail
export STAGEBENCH_MATRIX=${STAGEBENCH_MATRIX:-seed}
start=$SECONDS
nox -s bench; echo "bench: exit $? after $((SECONDS - start)) s"
nox -s publish; echo "publish: exit $?"
stagebench regressions --results .asv/results --format markdown > "$JOB/regressions.md"
echo "regressions: exit $?"
stagebench regressions --results .asv/results --format json > "$JOB/regressions.json"
tar -czf "$JOB/asv.tgz" .asv/results .asv/stagebench .asv/html
echo "nightly sequence: $((SECONDS - start)) s"
