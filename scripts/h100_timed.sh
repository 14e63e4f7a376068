# shellcheck shell=bash disable=SC2154  # job and times: set by the script that sources this
# Sourced by the H100 job scripts: `timed NAME COMMAND...` runs COMMAND with its output in
# $job/NAME.log and appends "NAME<TAB>seconds<TAB>exit code" to $times.
timed() {
    local name=$1
    shift
    local start=$SECONDS
    "$@" > "$job/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$((SECONDS - start))" "$rc" >> "$times"
    echo "$name: $((SECONDS - start)) s, exit $rc"
}
