"""The nightly as one script: the workflow's jobs and the night simulator run exactly this.

    python -m stagebench.nightly restore --remote R --branch B [--results DIR]
    python -m stagebench.nightly run [--results DIR] [--report DIR] [-- ASV RUN OPTIONS]
    python -m stagebench.nightly store --remote R --branch B [--results DIR] [--message M]

`restore` and `store` need git and the standard library only (they run where the credentials
are); `run` needs the measuring stack (the GPU container): bench (`nox -s bench`: asv on HEAD
under this machine's stable name, then the site), judge (the rule of `stagebench regressions`),
and write the report directory:
    summary.md        for the job summary
    regressions.json  the judged report
    alarm.md          the issue body, only when something alarms: a new regression, or a new
                      machine series where history existed
    verdict           one word: clean, regression, short-history, cannot-judge, bad-input, failed
Exit codes: 0 clean, 1 regression (alarm), 2 bad input, 3 cannot judge (verdict says whether the
history is merely short), 4 failed (bench, git or I/O).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

CLEAN, REGRESSION, BAD_INPUT, CANNOT_JUDGE, FAILED = 0, 1, 2, 3, 4
RESULTS_PREFIX = "results"  # where the results branch keeps asv's results directory
MIN_NIGHTS = 4  # judge.MIN_BASELINE + 1: fewer, and no series can be judged yet
BOT = ("stagebench-nightly", "stagebench-nightly@users.noreply.github.com")


class NightlyError(RuntimeError):
    """A step failed (git, the bench, the disk): the run ends with FAILED and says which."""


def _git(*args: str, cwd: Path | None = None, env: dict | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise NightlyError(f"git {' '.join(args[:2])} failed: {done.stderr.strip()[-300:]}")
    return done.stdout.strip()


class BadInput(ValueError):
    """A remote, branch or directory the phase cannot use: exit 2, one line."""


def _check_remote(remote: str) -> None:
    # git reads a leading '-' as an option (--upload-pack=... runs a command).
    if not remote.strip() or remote.startswith("-"):
        raise BadInput(f"--remote {remote!r}: give a remote name or URL (not an option)")


def _check_branch(branch: str) -> None:
    done = subprocess.run(
        ["git", "check-ref-format", "--branch", branch], capture_output=True, check=False
    )
    if not branch or branch.startswith("-") or done.returncode != 0:
        raise BadInput(f"--branch {branch!r} is not a branch name git accepts")


def _branch_exists(remote: str, branch: str) -> bool:
    """Whether refs/heads/<branch> itself exists (ls-remote's pattern also matches a/<branch>)."""
    ref = f"refs/heads/{branch}"
    done = subprocess.run(
        ["git", "ls-remote", "--heads", "--", remote, ref],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise NightlyError(f"cannot reach remote {remote!r}: {done.stderr.strip()[-300:]}")
    return any(line.split("\t")[-1] == ref for line in done.stdout.splitlines())


def _fetch(remote: str, branch: str) -> str:
    _git("fetch", "--no-tags", "--depth=1", "--", remote, f"refs/heads/{branch}")
    return _git("rev-parse", "FETCH_HEAD")


def _extract(commit: str, dest: Path) -> int:
    """The branch's results/ into `dest`: regular files only (no links, nothing outside dest),
    read from the tree itself: `git archive` would obey a .gitattributes on the branch
    (export-ignore) and silently leave history out. Returns the number of files."""
    listing = subprocess.run(
        ["git", "ls-tree", "-r", "-z", "--full-tree", commit, "--", RESULTS_PREFIX],
        capture_output=True,
        check=False,
    )
    if listing.returncode != 0:
        raise NightlyError(f"git ls-tree failed: {listing.stderr.decode()[-300:]}")
    blobs = []
    for entry in filter(None, listing.stdout.split(b"\0")):
        info, _, name = entry.partition(b"\t")
        mode, kind, sha = info.decode().split()
        path = name.decode("utf-8", "surrogateescape")
        relative = Path(path).relative_to(RESULTS_PREFIX)
        if ".." in relative.parts or relative.is_absolute():
            raise NightlyError(f"unsafe path in the results branch: {path}")
        if kind != "blob" or mode not in ("100644", "100755"):
            print(f"nightly: skipped {path}: not a regular file", file=sys.stderr)
            continue
        blobs.append((sha, dest / relative))
    if not blobs:
        return 0
    batch = subprocess.run(
        ["git", "cat-file", "--batch"],
        input=b"".join(sha.encode() + b"\n" for sha, _ in blobs),
        capture_output=True,
        check=False,
    )
    if batch.returncode != 0:
        raise NightlyError(f"git cat-file failed: {batch.stderr.decode()[-300:]}")
    data, at = batch.stdout, 0
    for _, target in blobs:
        header_end = data.index(b"\n", at)
        size = int(data[at:header_end].split()[2])
        body = data[header_end + 1 : header_end + 1 + size]
        at = header_end + 1 + size + 1  # the body is followed by a newline
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
    return len(blobs)


def restore(remote: str, branch: str, results: Path) -> int:
    if not _branch_exists(remote, branch):
        results.mkdir(parents=True, exist_ok=True)
        print(f"nightly: no branch {branch!r} on {remote}: starting from empty results")
        return CLEAN
    commit = _fetch(remote, branch)
    results.mkdir(parents=True, exist_ok=True)
    files = _extract(commit, results)
    print(f"nightly: restored {files} file(s) from {branch} ({commit[:12]}) into {results}")
    return CLEAN


def _merge_into(source: Path, dest: Path) -> None:
    """Copy our results over the branch's: files are per commit and machine, so ours win; JSON
    Lines logs are unions (lines the branch gained since our restore are kept)."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        target = dest / relative
        if path.is_symlink():
            print(f"nightly: not storing {relative}: a symbolic link", file=sys.stderr)
            continue
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".jsonl" and target.exists():
            ours = path.read_bytes().splitlines()
            theirs = target.read_bytes().splitlines()
            known = set(ours)
            merged = ours + [line for line in theirs if line not in known]
            target.write_bytes(b"\n".join(merged) + b"\n")
        else:
            shutil.copyfile(path, target)


def store(remote: str, branch: str, results: Path, message: str) -> int:
    """Commit `results` onto the results branch and push; retried when another run pushed
    first. Builds the commit with a private index: no checkout, no local branch is touched."""
    if not results.is_dir():
        raise NightlyError(f"no results directory at {results}")
    name, email = BOT
    identity = {
        "GIT_AUTHOR_NAME": os.environ.get("GIT_AUTHOR_NAME", name),
        "GIT_AUTHOR_EMAIL": os.environ.get("GIT_AUTHOR_EMAIL", email),
        "GIT_COMMITTER_NAME": os.environ.get("GIT_COMMITTER_NAME", name),
        "GIT_COMMITTER_EMAIL": os.environ.get("GIT_COMMITTER_EMAIL", email),
    }
    git_dir = _git("rev-parse", "--absolute-git-dir")
    for attempt in range(3):
        with tempfile.TemporaryDirectory(prefix="stagebench-store-") as tmp_name:
            tmp = Path(tmp_name)
            staging = tmp / "tree"
            (staging / RESULTS_PREFIX).mkdir(parents=True)
            parent = _fetch(remote, branch) if _branch_exists(remote, branch) else None
            if parent:
                _extract(parent, staging / RESULTS_PREFIX)
            _merge_into(results, staging / RESULTS_PREFIX)
            env = {
                **os.environ,
                **identity,
                "GIT_DIR": git_dir,
                "GIT_INDEX_FILE": str(tmp / "index"),
                "GIT_WORK_TREE": str(staging),
            }
            _git("add", "--all", "--force", RESULTS_PREFIX, cwd=staging, env=env)
            tree = _git("write-tree", cwd=staging, env=env)
            if parent and tree == _git("rev-parse", f"{parent}^{{tree}}"):
                print("nightly: no new results to store")
                return CLEAN
            commit = _git(
                "commit-tree", tree, *(["-p", parent] if parent else []), "-m", message, env=env
            )
            pushed = subprocess.run(
                ["git", "push", remote, f"{commit}:refs/heads/{branch}"],
                capture_output=True,
                text=True,
                check=False,
            )
            if pushed.returncode == 0:
                print(f"nightly: stored results as {commit[:12]} on {branch}")
                return CLEAN
            print(f"nightly: push attempt {attempt + 1} rejected: {pushed.stderr.strip()[-200:]}")
    raise NightlyError(f"could not push results to {branch} on {remote} after 3 attempts")


# -- run: bench, judge, report ---------------------------------------------------------------


def _write(report: Path, name: str, text: str) -> None:
    (report / name).write_text(text if text.endswith("\n") else text + "\n")


def _finish(report: Path, verdict: str, summary: list[str], code: int) -> int:
    _write(report, "verdict", verdict)
    _write(report, "summary.md", "\n".join(summary))
    print("\n".join(summary))
    return code


def _store_path() -> Path:
    explicit = os.environ.get("STAGEBENCH_STORE")
    return Path(explicit) if explicit else Path(".asv/results/stagebench-results.jsonl")


STACK_FACTS = ("python", "cuda_runtime", "cudnn", "driver")  # beside the packages
SAME_MACHINE = ("device_name", "gpu")  # a store holds every runner's Results


def _stack_between(good: str, bad: str, stage_class: str, store: Path | None = None) -> list[str]:
    """What differs in the software stack (package versions, Python, CUDA runtime, cuDNN)
    between the stored Results of two commits' runs of a stage (the store keeps each Result's
    environment): a release can be the culprit, not the code. Each commit's first Result is
    its locked lane's: a night measures the locked lane before the canary."""
    stacks: dict[str, dict] = {}
    for commit, env in _stored_envs(store or _store_path(), stage_class, (good, bad)):
        stacks.setdefault(commit, _stack(env))
    if good not in stacks or bad not in stacks:
        return []
    return _differences(stacks[good], stacks[bad])


def _stored_envs(store: Path, stage_class: str, commits) -> list[tuple[str, dict]]:
    """(commit, env) of the stored Results of `stage_class` at `commits`, in store order."""
    from stagebench import results as stored
    from stagebench.asv_suite import class_name_of

    found = []
    for result in stored.load(store):
        env = result.env if isinstance(result.env, dict) else {}
        if env.get("commit") not in commits:
            continue
        try:
            if class_name_of(result) == stage_class:
                found.append((env["commit"], env))
        except Exception:  # a stage this checkout no longer knows
            continue
    return found


def _stack(env: dict) -> dict:
    packages = env.get("packages") if isinstance(env.get("packages"), dict) else {}
    packages = {k: v for k, v in packages.items() if k != "stagebench"}
    return {**packages, **{k: env.get(k) for k in STACK_FACTS}}


def _differences(before: dict, after: dict) -> list[str]:
    return [
        f"{name} {before.get(name)} -> {after.get(name)}"
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    ]


def _stack_since(good: str, stage_class: str, store: Path, live: dict) -> list[str] | None:
    """What differs between the stack `good` was measured on (its first stored Result of the
    stage on this kind of machine: a night measures the locked lane first) and the stack here
    now, on which it would be re-measured tonight; None where its stack is not stored."""
    for _, env in _stored_envs(store, stage_class, (good,)):
        if all(env.get(k) == live.get(k) for k in SAME_MACHINE):
            return _differences(_stack(env), _stack(live))
    return None


def _commits_between(good: str, bad: str) -> list[str]:
    try:
        log = _git("log", "--first-parent", "--format=%h %s", f"{good}..{bad}")
    except NightlyError:
        return []
    return log.splitlines()


def _finding_lines(finding) -> list[str]:
    j = finding.judgement
    what = finding.direction if finding.metric == "ok" else f"{finding.metric} {finding.direction}"
    change = f" {j.change_pct:+.1f}%" if j.change_pct is not None else ""
    lines = [f"### `{finding.stage}`: {what}{change}", ""]
    level = f"- before {j.before:.4g}, after {j.after:.4g}"
    also = ", ".join(f"{m} {c:+.1f}%" for m, c in finding.derived if c is not None)
    if also:
        level += f" (with {also})"
    if j.noise_pct is not None and j.bar_pct is not None:
        level += f"; noise ±{j.noise_pct:.2f}% a run over {j.n_before} runs, bar {j.bar_pct:.1f}%"
    lines += [level, f"- last good `{finding.good[:12]}`, first bad `{finding.bad[:12]}`"]
    if finding.confirmation:
        lines.append(f"- {finding.confirmation}")
    folded = getattr(finding, "folded", None)
    if folded is not None and folded.confirmation:
        lines.append(f"- {folded.metric}: {folded.confirmation}")
    commits = _commits_between(finding.good, finding.bad)
    if commits:
        shown = ", ".join(f"`{c}`" for c in commits[:10])
        lines.append(f"- commits in the range ({len(commits)}): {shown}")
    stack = _stack_between(finding.good, finding.bad, finding.stage)
    if stack:
        lines.append(f"- the stack changed in the range: {', '.join(stack)}")
    return [*lines, "", "```sh", finding.bisect, "```", ""]


def _alarm(
    findings: list, machine: str, commit: str, notes: list[str], canary: list[str] = ()
) -> str:
    diverged = any(line.endswith("**new**") for line in canary)
    title = (
        "Nightly regression"
        if findings
        else ("Canary lane diverges" if diverged else "Nightly machine change")
    )
    lines = ["<!-- stagebench-nightly-alarm -->", f"## {title} on `{machine}` at `{commit[:12]}`"]
    run_url = os.environ.get("STAGEBENCH_RUN_URL")
    lines += ["", f"Run: {run_url}", ""] if run_url else [""]
    for finding in findings:
        lines += _finding_lines(finding)
    if notes:
        lines += ["### Machine", "", *[f"- {n}" for n in notes], ""]
    if diverged:
        lines += list(canary)
    return "\n".join(lines)


class Cancelled(Exception):
    """SIGTERM/SIGINT reached the nightly: its child session was stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"cancelled by {signal.Signals(signum).name}")
        self.signum = signum


NOX_REMEASURE = [sys.executable, "-m", "nox", "-s", "remeasure", "--"]


def _step(command: list[str], env: dict) -> int:
    """Run one step (nox and the asv and stage processes under it) in a session of its own; a
    SIGTERM or SIGINT to the nightly (a cancelled job) stops that whole session before the
    nightly exits, so no bench goes on writing tonight's results behind it."""
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    caught: list[int] = []

    def forward(signum, _frame) -> None:
        caught.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                code = proc.wait(timeout=10 if caught else None)
                break
            except subprocess.TimeoutExpired:  # the session did not stop on SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers the step left in its session
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise Cancelled(caught[0])
    return code


def _remeasure(report, head: str, out: Path, env: dict) -> None:
    """Re-run the stages of new regressions and confirm or refute each finding (see
    regress.confirm): for a measured metric, its last good commit, then this one (`head`); when
    the good run is off its history (a slow night, or a burst on that one run), both once more,
    interleaved. The good commit is re-measured on tonight's stack only where it was measured
    on the same one: otherwise its code would not be the only difference. The re-runs read a
    copy of the history's Results (the reference) and write only into `out`."""
    from stagebench import env as facts
    from stagebench import regress

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    def pattern(findings) -> str:
        classes = sorted({regress.stage_class_of(f.benchmark) for f in findings})
        return "|".join(f"^{re.escape(c)}\\." for c in classes)

    def measure(findings, commit: str | None = None) -> dict:
        which = [commit] if commit else []
        code = _step([*NOX_REMEASURE, str(out.resolve()), pattern(findings), *which], env)
        if code != 0 and commit:
            for f in findings:
                unmoved[f.benchmark] = f"`nox -s remeasure` exited {code} on it"
        return _remeasured(out, env)

    unmoved: dict[str, str] = {}  # benchmark -> why its good commit was not re-measured
    store = Path(env["STAGEBENCH_STORE"])
    measured = [f for f in report.new if f.metric != regress.OK_METRIC]
    live = facts.collect() if measured else {}
    goods: dict[str, list] = {}
    for f in measured:
        stack = _stack_since(f.good, f.stage, store, live)
        if stack is None:
            unmoved[f.benchmark] = "its stack on this machine is not in the stored Results"
        elif stack:
            unmoved[f.benchmark] = f"the stack changed since ({', '.join(stack)})"
        else:
            goods.setdefault(f.good, []).append(f)
    with tempfile.TemporaryDirectory(prefix="stagebench-remeasure-") as scratch:
        copy = Path(scratch) / store.name
        if store.is_file():
            shutil.copyfile(store, copy)
        env = {**env, "STAGEBENCH_STORE": str(copy)}
        # Each measure() returns every value in `out` so far: the last call of a round holds it.
        for good, findings in sorted(goods.items()):
            measure(findings, good)
        first = measure(report.new)
        off = [f for fs in goods.values() for f in fs if _good_drifted(f, first)]
        second: dict = {}
        if off:
            for good in sorted({f.good for f in off}):
                measure([f for f in off if f.good == good], good)
            second = measure(off)

    def confirm(f, rounds, unmoved_why: str | None):
        f = regress.confirm(
            f,
            [r.get((head, f.benchmark)) for r in rounds],
            [r.get((f.good, f.benchmark)) for r in rounds],
        )
        if unmoved_why:
            f = dataclasses.replace(f, confirmation=f"{f.confirmation} ({unmoved_why})")
        return f

    confirmed = []
    for f in report.regressions:
        if f.new:
            rounds = (first, second) if f in off else (first,)
            why = unmoved.get(f.benchmark)  # a folded floor shares its speed finding's re-runs
            why = why and f"last good {f.good[:12]} not re-measured: {why}"
            floor = f.folded
            f = confirm(f, rounds, why)
            if floor is not None:  # the same re-runs hold the floor: judged on its own
                floor = confirm(floor, rounds, why)
                if f.confirmed is False and floor.confirmed:
                    f = floor  # the median was a burst of host load; the slower kernel is real
                else:
                    f = dataclasses.replace(f, folded=floor)
        confirmed.append(f)
    report.regressions = confirmed


def _remeasured(out: Path, env: dict) -> dict[tuple[str, str], float | None]:
    """(commit, benchmark) -> the value re-measured into `out` (asv keeps a commit's latest)."""
    from stagebench import history

    values: dict[tuple[str, str], float | None] = {}
    try:
        again = history.load(out, machine=env["STAGEBENCH_ASV_MACHINE"])
    except history.CannotJudge:
        return values  # nothing re-measured: the findings stand unrefuted
    for series in again.series.values():
        for name, points in series.items():
            for point in points:
                values[(point.commit, name)] = point.value
    return values


def _good_drifted(finding, values: dict) -> bool:
    from stagebench import regress

    value = values.get((finding.good, finding.benchmark))
    return value is not None and regress.drifted(finding, value)


def _nights(results: Path, machine: str) -> int:
    """Nights of the locked lane (asv names each file <commit>-<environment>.json)."""
    return sum(1 for p in (results / machine).glob("*-interpreter-*.json"))


def _python_version() -> str:
    return "{}.{}".format(*sys.version_info[:2])


def _tonight(store: Path, commit: str, canary: Path) -> dict[tuple[str, str], object]:
    """(lane, stage class) -> tonight's Result; one measured in the canary's overlay (its env
    names the overlay's prefix) is the canary's, any other the locked lane's (whose image may
    itself be an overlay)."""
    from stagebench import lanes
    from stagebench import results as stored
    from stagebench.asv_suite import class_name_of

    found: dict[tuple[str, str], object] = {}
    for result in stored.load(store):
        if (result.env or {}).get("commit") != commit:
            continue
        where = ((result.env or {}).get("overlay") or {}).get("path")
        lane = lanes.CANARY if where and Path(where) == canary else lanes.LOCKED
        try:
            found[(lane, f"stages.{class_name_of(result)}")] = result
        except Exception:  # a stage this checkout no longer knows
            continue
    return found


def _canary(results: Path, report: Path, env: dict, name: str, commit: str, asv_args: list):
    """The canary lane: build it, measure it through asv, find and bisect what diverges from
    the locked lane. Returns (state, moved packages, divergences)."""
    from stagebench import history, lanes, noise, overlay, releases

    base = overlay.base_info()
    tracked = lanes.followed(base.packages)
    if not tracked:
        return "no tracked package in the locked stack", [], []
    src = lanes.source()
    try:
        # The newest releases first (an index query): an overlay only where one moved.
        newest = overlay.pin(tracked, src)
        if all(lanes.same_version(pin, base.packages) for pin in newest):
            return "the newest releases are the locked ones: not measured", [], []
        built = overlay.build(newest, source=src)
    except overlay.Incompatible as exc:
        why = f"not built: the newest releases do not install or import here ({exc.reason})"
        return why, [], []
    except (overlay.OverlayError, releases.ReleaseError) as exc:
        return f"not built: {exc}", [], []
    moved = lanes.moved(built.changed, tracked)
    changes = [f"{n} {o} -> {v}" for n, o, v in moved]
    if not moved:
        return "the newest releases are the locked ones: not measured", [], []
    bench = _step(
        [sys.executable, "-m", "nox", "-s", "bench", "--", *asv_args],
        {**env, "STAGEBENCH_CANARY_PYTHON": built.python},
    )
    if bench != 0:
        return f"measured, but `nox -s bench` exited {bench}", changes, []
    judged = history.load(results, machine=name, order=history.git_order())
    found = lanes.divergences(
        judged,
        name,
        commit,
        _python_version(),
        _tonight(Path(env["STAGEBENCH_STORE"]), commit, built.path),
        noise.priors(noise.load(results), name, noise.versions(results)),
    )
    lanes.mark_standing(found, lanes.read_log(results), name, changes)
    store = Path(env["STAGEBENCH_STORE"])
    for i, d in enumerate(d for d in found if d.alarms):
        if i < lanes.MAX_BISECTS:
            d.answer = lanes.bisect(d, moved, report / "bisect" / d.stage, src, store)
        else:
            why = f"not bisected tonight ({lanes.MAX_BISECTS} a night): run it"
            d.answer = {"lines": [why], "command": lanes.command(d, moved)}
    lanes.append_log(results, lanes.log_entry(name, commit, changes, "measured", found))
    return "measured", changes, found


def _canary_lines(state: str, changes: list[str], found: list) -> list[str]:
    lines = ["### Canary lane", "", f"- {state}"]
    if changes:
        lines.append(f"- newest releases: {', '.join(changes)}")
    if not found and state == "measured":
        lines.append("- no stage diverges from the locked lane beyond its noise")
    for d in found:
        change = "" if d.change_pct is None else f" {d.change_pct:+.1f}%"
        bar = "" if d.bar_pct is None else f" (bar {d.bar_pct:.1f}%)"
        when = "**new**" if d.alarms else ("standing" if d.kind in ("failed", "slower") else "")
        what = "" if d.metric == "step_time_ms" else f" ({d.metric})"
        lines.append(f"- `{d.stage}`: {d.kind}{what} in the canary{change}{bar} {when}".rstrip())
        if d.answer:
            lines += [f"  - {line}" for line in d.answer.get("lines", [d.answer.get("message")])]
            if d.answer.get("tried"):
                lines.append(f"  - releases tried: {'; '.join(d.answer['tried'])}")
            if d.answer.get("command"):
                lines.append(f"  - `{d.answer['command']}`")
    return [*lines, ""]


def run(results: Path, report: Path, asv_args: list[str]) -> int:
    from stagebench import history, lanes
    from stagebench import machine as machines

    try:
        chosen = lanes.parse_lanes(os.environ.get("STAGEBENCH_LANES") or lanes.LOCKED)
    except lanes.LaneError as exc:
        raise BadInput(str(exc)) from None
    if report.exists() and not report.is_dir():
        raise BadInput(f"--report {report} is a file; give a directory")
    if results.exists() and not results.is_dir():
        raise BadInput(f"--results {results} is a file; give a directory")
    report.mkdir(parents=True, exist_ok=True)
    for stale in ("alarm.md", "summary.md", "regressions.json", "verdict"):
        (report / stale).unlink(missing_ok=True)
    info = machines.facts()
    try:
        name = machines.name(info)
    except ValueError as exc:
        return _finish(report, "bad-input", [f"stagebench nightly: {exc}"], BAD_INPUT)
    log = machines.read_log(results)
    mine = [e for e in log if e["machine"] == name]
    seen = {e["machine"] for e in log} | {p.parent.name for p in results.glob("*/machine.json")}
    notes = []
    if not mine and seen - {name}:
        notes.append(
            f"new machine series `{name}`: earlier nights ran on "
            f"{', '.join(f'`{m}`' for m in sorted(seen - {name}))}; its history starts tonight"
        )
    changed = machines.changes(mine[-1].get("facts") if mine else None, info)
    if changed:
        notes.append("machine facts changed since its last night: " + "; ".join(changed))

    # asv writes where the judge reads: the bench gets this results directory (and the store
    # of full Results inside it, unless one is set), not only asv.conf.json's.
    env = {
        **os.environ,
        "STAGEBENCH_ASV_MACHINE": name,
        "STAGEBENCH_ASV_RESULTS": str(results.resolve()),
        "STAGEBENCH_STORE": os.environ.get("STAGEBENCH_STORE")
        or str(results.resolve() / "stagebench-results.jsonl"),
    }
    suite = subprocess.run(
        [sys.executable, "-m", "stagebench.asv_suite"], env=env, capture_output=True, text=True
    )
    if suite.returncode != 0:  # a bad STAGEBENCH_* variable: say which, before asv runs
        error = (suite.stderr.strip().splitlines() or ["the suite does not import"])[-1]
        return _finish(report, "bad-input", [f"**Nightly not run**: {error}"], BAD_INPUT)
    bench = _step([sys.executable, "-m", "nox", "-s", "bench", "--", *asv_args], env)
    if bench != 0:
        summary = [f"**Nightly failed**: `nox -s bench` exited {bench} on `{name}`."]
        return _finish(report, "failed", summary, FAILED)
    commit = _git("rev-parse", "HEAD")
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    machines.append_log(results, {"machine": name, "commit": commit, "date": now, "facts": info})

    from stagebench import regress

    header = [f"Nightly on `{name}` at `{commit[:12]}`.", *[f"- {n}" for n in notes], ""]
    canary: list[str] = []
    if lanes.CANARY in chosen:
        state, moved, found = _canary(results, report, env, name, commit, asv_args)
        canary = _canary_lines(state, moved, found)
        if any(d.alarms for d in found):
            notes = [*notes, "the canary lane diverges from the locked lane: see below"]
    nights = _nights(results, name)
    short = nights < MIN_NIGHTS
    locked_env = lanes.env_name(lanes.LOCKED, _python_version())
    try:
        # The checkout's commit order, not author dates: a rebased or fast-forwarded commit is
        # tonight's even when it was written before last night's. The history's alarms are the
        # locked lane's; the canary alarms by its divergence from it (above).
        judged = regress.check(results, machine=name, order=history.git_order(), env=locked_env)
    except regress.CannotJudge as exc:
        why = (
            f"history too short to judge: {nights} night(s) on `{name}`, {MIN_NIGHTS} needed"
            if short
            else f"cannot judge: {exc}"
        )
        alarm_canary = any(line.endswith("**new**") for line in canary)
        if (notes and not mine) or alarm_canary:
            _write(report, "alarm.md", _alarm([], name, commit, notes, canary))
        if alarm_canary:
            return _finish(report, "regression", [*header, f"**{why}**", "", *canary], REGRESSION)
        verdict = "short-history" if short else "cannot-judge"
        return _finish(report, verdict, [*header, f"**{why}**", "", *canary], CANNOT_JUDGE)
    if judged.new:  # one run under a burst of load must not alarm: measure it again
        _remeasure(judged, commit, report / "remeasured", env)
    _write(report, "regressions.json", regress.to_json(judged))
    summary = [*header, regress.to_markdown(judged), "", *canary]
    if judged.alarms or any(line.endswith("**new**") for line in canary):
        _write(report, "alarm.md", _alarm(judged.alarms, name, commit, notes, canary))
        return _finish(report, "regression", summary, REGRESSION)
    if short:  # a failure can be judged from two nights on, a metric not before four
        summary.append(
            f"\n**History too short to judge the metrics**: {nights} night(s) on `{name}`, "
            f"{MIN_NIGHTS} needed."
        )
        return _finish(report, "short-history", summary, CANNOT_JUDGE)
    return _finish(report, "clean", summary, CLEAN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stagebench.nightly", description=__doc__)
    sub = parser.add_subparsers(dest="phase", required=True)
    for phase in ("restore", "store"):
        p = sub.add_parser(phase)
        p.add_argument("--remote", required=True, help="git remote name or URL")
        p.add_argument("--branch", default="benchmark-results")
        p.add_argument("--results", type=Path, default=Path(".asv/results"))
        if phase == "store":
            p.add_argument("--message", default="Benchmark results")
    p = sub.add_parser("run")
    p.add_argument(
        "--results", type=Path, default=Path(".asv/results"), help="asv's results directory"
    )
    p.add_argument("--report", type=Path, default=Path(".asv/report"))
    p.add_argument("asv_args", nargs=argparse.REMAINDER, help="after --: asv run options")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return BAD_INPUT if exc.code else CLEAN
    try:
        if args.phase in ("restore", "store"):
            _check_remote(args.remote)
            _check_branch(args.branch)
        if args.phase == "restore":
            return restore(args.remote, args.branch, args.results)
        if args.phase == "store":
            return store(args.remote, args.branch, args.results, args.message)
        extra = args.asv_args[1:] if args.asv_args[:1] == ["--"] else args.asv_args
        return run(args.results, args.report, extra)
    except BadInput as exc:
        print(f"stagebench nightly: error: {exc}", file=sys.stderr)
        return BAD_INPUT
    except Cancelled as exc:
        print(f"stagebench nightly: {args.phase} {exc}", file=sys.stderr)
        return 128 + exc.signum
    except (NightlyError, OSError) as exc:
        print(f"stagebench nightly: {args.phase} failed: {exc}", file=sys.stderr)
        return _failed(args, str(exc))
    except Exception as exc:  # a bug: never exit 1, which the workflow reads as an alarm
        traceback.print_exc()
        print(f"stagebench nightly: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return _failed(args, f"internal error: {type(exc).__name__}: {exc}")


def _failed(args: argparse.Namespace, why: str) -> int:
    """FAILED, with a verdict file when the run had a report directory to write it to."""
    if args.phase == "run" and args.report.is_dir():
        with contextlib.suppress(OSError):
            _finish(args.report, "failed", [f"**Nightly failed**: {why}"], FAILED)
    return FAILED


if __name__ == "__main__":
    sys.exit(main())
