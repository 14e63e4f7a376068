#!/usr/bin/env bash
# Long GPU verifications on a host whose single command is time-limited: start a job detached,
# then poll it from later commands; every poll copies the job's files to OUTDIR.
# Usage: scripts/h100_bg.sh setup
#        scripts/h100_bg.sh start NAME COMMAND        (one string; runs detached in the project
#                                                     root with $JOB = a directory for its files)
#        scripts/h100_bg.sh wait NAME SECONDS OUTDIR  (exit 0 done, 3 still running)
set -uo pipefail
state=/tmp/stagebench-bg
mkdir -p "$state"
env_file=$state/env.sh

case $1 in
  setup)
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    fi
    # The tree arrives without usable git metadata; asv needs a repository to date its results,
    # so the tree as sent is committed as a snapshot (on main, the branch asv.conf.json names).
    git rev-parse --git-dir >/dev/null 2>&1 || git init -q
    git checkout -q -B main
    git add -A && git -c user.email=bench@example.invalid -c user.name=bench \
      commit -q --allow-empty -m "verification snapshot"
    # asv runs benchmarks without PYTHONPATH: make the wheels and the source tree part of the
    # interpreter itself, as an installed package would be, and give it its console script.
    site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    printf '%s\n' /tmp/site "$PWD/src" > "$site/stagebench-verify.pth"
    mkdir -p /tmp/site/bin
    printf '#!/bin/sh\nexec python3 -m stagebench.cli "$@"\n' > /tmp/site/bin/stagebench
    chmod +x /tmp/site/bin/stagebench
    cat > "$env_file" <<ENV
export PATH=/tmp/site/bin:\$PATH PYTHONUNBUFFERED=1  # no PYTHONPATH: asv strips its entries
export HF_HUB_OFFLINE=1 STAGEBENCH_NOX_REUSE_SYSTEM=1
ENV
    ;;
  start)
    name=$2; shift 2
    rm -rf "${state:?}/$name" "$state/$name".*
    mkdir -p "$state/$name"
    # setsid: the job outlives this command; the host keeps it until the machine goes back.
    setsid bash -c "source '$env_file'; export JOB='$state/$name'; $*; rc=\$?; \
      echo \"\$rc \$SECONDS\" > '$state/$name.done'" \
      > "$state/$name.log" 2>&1 < /dev/null &
    echo "started $name"
    ;;
  wait)
    name=$2; limit=$3; out=$4
    for ((i = 0; i < limit; i += 5)); do
      [ -f "$state/$name.done" ] && break
      sleep 5
    done
    mkdir -p "$out"
    cp "$state/$name".* "$out/" 2>/dev/null
    tar -czf "$out/$name-files.tgz" -C "$state" "$name"
    tail -n 25 "$state/$name.log"
    if [ -f "$state/$name.done" ]; then
      echo "done $name: exit, seconds = $(cat "$state/$name.done")"
      exit 0
    fi
    echo "running $name"
    exit 3
    ;;
esac
