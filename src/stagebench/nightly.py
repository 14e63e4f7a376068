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
import datetime as dt
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
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


def _branch_exists(remote: str, branch: str) -> bool:
    done = subprocess.run(
        ["git", "ls-remote", "--exit-code", "--heads", remote, branch],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 0:
        return True
    if done.returncode == 2:  # reached the remote, no such branch
        return False
    raise NightlyError(f"cannot reach remote {remote!r}: {done.stderr.strip()[-300:]}")


def _fetch(remote: str, branch: str) -> str:
    _git("fetch", "--no-tags", "--depth=1", remote, f"refs/heads/{branch}")
    return _git("rev-parse", "FETCH_HEAD")


def _extract(commit: str, dest: Path) -> int:
    """The branch's results/ into `dest`: regular files and folders only (no links, nothing
    outside dest), whatever the branch holds. Returns the number of files."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, RESULTS_PREFIX],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        if b"did not match any files" in archive.stderr:
            return 0
        raise NightlyError(f"git archive failed: {archive.stderr.decode()[-300:]}")
    files = 0
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        for member in tar.getmembers():
            relative = Path(member.name).relative_to(RESULTS_PREFIX)
            if ".." in relative.parts or relative.is_absolute():
                raise NightlyError(f"unsafe path in the results branch: {member.name}")
            target = dest / relative
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                target.write_bytes(source.read() if source else b"")
                files += 1
            else:
                print(f"nightly: skipped {member.name}: not a regular file", file=sys.stderr)
    return files


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


def _packages_between(good: str, bad: str, stage_class: str) -> list[str]:
    """Package versions that differ between the Results of the last good and first bad commit
    (the store keeps each Result's environment): a release can be the culprit, not the code."""
    from stagebench import results as stored
    from stagebench.asv_suite import class_name_of

    versions: dict[str, dict] = {}
    for result in stored.load(_store_path()):
        commit = result.env.get("commit")
        if commit in (good, bad) and class_name_of(result) == stage_class:
            versions[commit] = result.env.get("packages") or {}
    if good not in versions or bad not in versions:
        return []
    before, after = versions[good], versions[bad]
    return [
        f"{name} {before.get(name)} -> {after.get(name)}"
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name) and name != "stagebench"
    ]


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
    commits = _commits_between(finding.good, finding.bad)
    if commits:
        shown = ", ".join(f"`{c}`" for c in commits[:10])
        lines.append(f"- commits in the range ({len(commits)}): {shown}")
    packages = _packages_between(finding.good, finding.bad, finding.stage)
    if packages:
        lines.append(f"- packages changed in the range: {', '.join(packages)}")
    return [*lines, "", "```sh", finding.bisect, "```", ""]


def _alarm(findings: list, machine: str, commit: str, notes: list[str]) -> str:
    title = "Nightly regression" if findings else "Nightly machine change"
    lines = ["<!-- stagebench-nightly-alarm -->", f"## {title} on `{machine}` at `{commit[:12]}`"]
    run_url = os.environ.get("STAGEBENCH_RUN_URL")
    lines += ["", f"Run: {run_url}", ""] if run_url else [""]
    for finding in findings:
        lines += _finding_lines(finding)
    if notes:
        lines += ["### Machine", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def _remeasure(report, results_dir: Path, out: Path, env: dict) -> None:
    """Re-run the stages of new regressions once and confirm or refute each finding."""
    from stagebench import history, regress

    classes = sorted({regress.stage_class_of(f.benchmark) for f in report.new})
    pattern = "|".join(f"^{re.escape(c)}\\." for c in classes)
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "nox", "-s", "remeasure", "--", str(out), pattern],
        env=env,
        check=False,
    )
    values: dict[str, float | None] = {}
    try:
        again = history.load(out, machine=env["STAGEBENCH_ASV_MACHINE"])
        for series in again.series.values():
            for name, points in series.items():
                values[name] = points[-1].value if points else None
    except history.CannotJudge:
        pass  # nothing re-measured: the findings stand unrefuted
    report.regressions = [
        regress.confirm(f, values.get(f.benchmark)) if f.new else f for f in report.regressions
    ]


def _nights(results: Path, machine: str) -> int:
    folder = results / machine
    return sum(1 for p in folder.glob("*.json") if p.name != "machine.json")


def run(results: Path, report: Path, asv_args: list[str]) -> int:
    from stagebench import machine as machines

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

    env = {**os.environ, "STAGEBENCH_ASV_MACHINE": name}
    suite = subprocess.run(
        [sys.executable, "-m", "stagebench.asv_suite"], env=env, capture_output=True, text=True
    )
    if suite.returncode != 0:  # a bad STAGEBENCH_* variable: say which, before asv runs
        error = (suite.stderr.strip().splitlines() or ["the suite does not import"])[-1]
        return _finish(report, "bad-input", [f"**Nightly not run**: {error}"], BAD_INPUT)
    bench = subprocess.run(
        [sys.executable, "-m", "nox", "-s", "bench", "--", *asv_args], env=env, check=False
    )
    if bench.returncode != 0:
        summary = [f"**Nightly failed**: `nox -s bench` exited {bench.returncode} on `{name}`."]
        return _finish(report, "failed", summary, FAILED)
    commit = _git("rev-parse", "HEAD")
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    machines.append_log(results, {"machine": name, "commit": commit, "date": now, "facts": info})

    from stagebench import regress

    header = [f"Nightly on `{name}` at `{commit[:12]}`.", *[f"- {n}" for n in notes], ""]
    nights = _nights(results, name)
    short = nights < MIN_NIGHTS
    try:
        judged = regress.check(results, machine=name)
    except regress.CannotJudge as exc:
        why = (
            f"history too short to judge: {nights} night(s) on `{name}`, {MIN_NIGHTS} needed"
            if short
            else f"cannot judge: {exc}"
        )
        if notes and not mine:
            _write(report, "alarm.md", _alarm([], name, commit, notes))
        verdict = "short-history" if short else "cannot-judge"
        return _finish(report, verdict, [*header, f"**{why}**"], CANNOT_JUDGE)
    if judged.new:  # one run under a burst of load must not alarm: measure it again
        _remeasure(judged, results, report / "remeasured", env)
    _write(report, "regressions.json", regress.to_json(judged))
    summary = [*header, regress.to_markdown(judged)]
    if judged.alarms:
        _write(report, "alarm.md", _alarm(judged.alarms, name, commit, notes))
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
    p.add_argument("--results", type=Path, default=Path(".asv/results"))
    p.add_argument("--report", type=Path, default=Path(".asv/report"))
    p.add_argument("asv_args", nargs=argparse.REMAINDER, help="after --: asv run options")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return BAD_INPUT if exc.code else CLEAN
    try:
        if args.phase == "restore":
            return restore(args.remote, args.branch, args.results)
        if args.phase == "store":
            return store(args.remote, args.branch, args.results, args.message)
        extra = args.asv_args[1:] if args.asv_args[:1] == ["--"] else args.asv_args
        return run(args.results, args.report, extra)
    except (NightlyError, OSError) as exc:
        print(f"stagebench nightly: {args.phase} failed: {exc}", file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
