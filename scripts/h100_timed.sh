# shellcheck shell=bash
# Sourced by the H100 job scripts (run through scripts/h100_bg.sh, which sets $JOB): $job is the
# job's directory, $times its phase log; `timed NAME COMMAND...` runs COMMAND with its output in
# $job/NAME.log and appends "NAME<TAB>seconds<TAB>exit code" to $times; `gpu_facts` writes the
# GPU's name, driver, clock and power limit to $job/gpu.csv.
job=${JOB:?run through scripts/h100_bg.sh start}
times=$job/times.tsv

timed() {
    local name=$1
    shift
    local start=$SECONDS
    "$@" > "$job/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$((SECONDS - start))" "$rc" >> "$times"
    echo "$name: $((SECONDS - start)) s, exit $rc"
}

gpu_facts() {
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv \
        > "$job/gpu.csv" 2>&1
}
