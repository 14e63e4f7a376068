"""`stagebench ...`: thin; parses, validates, calls the rooms, prints.

Exit codes, the same for every command:
  0  clean: every stage ok or unavailable; no regression
  1  a stage failed (run, matrix) or a regression (regressions, compare)
  2  bad input: one line says what was wrong and what is accepted
  3  cannot judge (regressions, compare): no readable history, machine not found, history
     too short; (bisect-release) GOOD and BAD measure the same, an endpoint is incompatible
     here, or no package of a lock bump alone reproduces the change
  4  stagebench could not do its job: results not stored (a full disk), an overlay it could
     not build (no venv, no pip), or an unexpected error (its traceback, then one line)
bisect-release exits 0 when it names the first bad (or first good) release; an index that
cannot be reached is bad input (2): the URL or the network is wrong, and --find-links DIR
works offline.
  128 + N  cancelled by signal N (SIGTERM: 143, SIGINT: 130); the cancelled stage is stored
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stagebench import __version__, env, results, stages
from stagebench.host_gc import MODES as HOST_GC_MODES
from stagebench.models import PRESETS, ModelError, default_preset, load_config
from stagebench.results import Result, StoreError
from stagebench.workload import WORKLOADS, Workload, defaults_for, named

if TYPE_CHECKING:
    from stagebench.noise import StageNoise

MATRICES = stages.MATRICES


EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANNOT_JUDGE, EXIT_NOT_DONE = 1, 2, 3, 4


class BadInput(Exception):
    """Raised for input errors; main() prints it on one line and exits 2."""


class CannotJudgeError(Exception):
    """No history to judge by (regressions, compare); main() prints it and exits 3."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise BadInput(message)


def _workload_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload (defaults: the seed's, per device)")
    g.add_argument("--model", help=f"preset ({', '.join(PRESETS)}), checkpoint dir or hub id")
    g.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    g.add_argument("--dtype", choices=["bfloat16", "float16", "float32"])
    g.add_argument(
        "--workload",
        metavar="NAME",
        help=f"a named shape ({', '.join(WORKLOADS)}; default: b1x2048 on CUDA, the seed's); "
        "--batch-size and --seq-len override it",
    )
    g.add_argument("--batch-size", type=int)
    g.add_argument("--seq-len", type=int)
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--min-steps", type=int)
    g.add_argument("--max-steps", type=int)
    g.add_argument("--target-ci-pct", type=float, help="stop once the median's CI is this tight")
    g.add_argument("--seed", type=int)
    g.add_argument("--timeout", type=float, dest="timeout_s", help="seconds per stage")
    g.add_argument("--peak-tflops", type=float, help="device peak for MFU, overrides the table")
    g.add_argument("--compile-cache", help="inductor cache directory (reused across runs)")
    g.add_argument(
        "--nproc",
        type=int,
        help="processes (one per GPU) launched by torchrun, the model sharded with FSDP2",
    )
    g.add_argument(
        "--profile-steps",
        type=int,
        help="steps profiled after the timed ones, where the time goes (default 3; 0: none)",
    )
    g.add_argument(
        "--host-gc",
        choices=list(HOST_GC_MODES),
        help="Python's garbage collector in the measured steps: as it runs (default), frozen "
        "after the warm-up, or off until they end",
    )
    o = p.add_argument_group("output")
    o.add_argument("--jsonl", type=Path, help="append every Result to this JSON Lines file")
    o.add_argument("--log-dir", type=Path, help="keep each stage's child log here")


def build_parser() -> Parser:
    parser = Parser(prog="stagebench", description=__doc__)
    parser.add_argument("--version", action="version", version=f"stagebench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = sub.add_parser(
        "run",
        help="run stages by seed id or spec (sdpa+liger+cce+compile, sdpa+compile:fullgraph=off)",
    )
    run.add_argument("stages", nargs="+", metavar="STAGE")
    _workload_args(run)
    matrix = sub.add_parser("matrix", help="run a named matrix or a comma-separated subset")
    matrix.add_argument(
        "--subset",
        help=f"{' | '.join(MATRICES)} | STAGE,STAGE,... (default: seed on CUDA, cpu otherwise)",
    )
    _workload_args(matrix)
    lst = sub.add_parser("list", help="every stage and whether it can run here")
    lst.add_argument("--device", choices=["cuda", "cpu"])
    envp = sub.add_parser("env", help="versions, CUDA, driver, GPU, clocks, host")
    envp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    reg = sub.add_parser("regressions", help="regressions in asv's result history (exit 1 if any)")
    reg.add_argument("--results", type=Path, default=Path(".asv/results"), metavar="DIR")
    reg.add_argument("--format", choices=["markdown", "json"], default="markdown")
    reg.add_argument("--machine", help="one machine's results (default: every machine)")
    reg.add_argument("--benchmark", metavar="REGEX", help="only benchmarks whose name matches")
    reg.add_argument(
        "--new-only",
        action="store_true",
        help="exit 1 only for regressions the newest commit brought (what a nightly alarms on)",
    )
    cmp = sub.add_parser(
        "compare", help="two commits (asv history) or two JSONL result sets (exit 1 if worse)"
    )
    cmp.add_argument("before", help="commit (hash prefix), JSONL file, or FILE#STAGE")
    cmp.add_argument("after", help="commit (hash prefix), JSONL file, or FILE#STAGE")
    cmp.add_argument("--results", type=Path, default=Path(".asv/results"), metavar="DIR")
    cmp.add_argument("--machine", help="one machine's results (default: every machine)")
    cmp.add_argument("--format", choices=["markdown", "json"], default="markdown")
    cmp.add_argument(
        "--explain",
        action="store_true",
        help="where the time went: the profiles' kernel groups and the kernels that changed most",
    )
    noise = sub.add_parser(
        "noise",
        help="run-to-run noise and minimal detectable effect per stage, over separate processes",
    )
    noise.add_argument("stages", nargs="*", metavar="STAGE")
    noise.add_argument(
        "--subset", help=f"{' | '.join(MATRICES)} | STAGE,STAGE,... instead of STAGE arguments"
    )
    noise.add_argument("--runs", type=int, help="processes per stage (default 5)")
    noise.add_argument(
        "--results",
        type=Path,
        default=Path(".asv/results"),
        metavar="DIR",
        help="asv's results directory: the records are appended to its stagebench-noise.jsonl",
    )
    noise.add_argument(
        "--show", action="store_true", help="print the recorded noise in DIR, measure nothing"
    )
    noise.add_argument(
        "--from",
        dest="from_files",
        type=Path,
        action="append",
        metavar="JSONL",
        help="summarize the Results stored in JSONL (one per process, as `noise --jsonl` keeps "
        "them) into records, measure nothing (workload options do not apply); repeatable, "
        "each file its own measurement",
    )
    _workload_args(noise)
    _bisect_release_args(sub)
    return parser


def _bisect_release_args(sub: argparse._SubParsersAction) -> None:
    from stagebench.metrics import METRICS

    p = sub.add_parser(
        "bisect-release",
        help="the first release of a package that changed a stage (or which package of a lock "
        "bump did it)",
        description="PACKAGE GOOD BAD: versions (or YYYY-MM-DD dates of a nightly channel). "
        "Or --from-lock OLD --to-lock NEW instead: the base environment stands for OLD.",
    )
    p.add_argument("target", nargs="*", metavar="PACKAGE GOOD BAD")
    p.add_argument("--stage", required=True, help="a seed id or spec, as `run` takes")
    judged = [name for name, m in METRICS.items() if m.family != "first_step"]
    p.add_argument(
        "--metric",
        default="step_time_ms",
        choices=judged,
        help="what counts as bad besides the status (default: step_time_ms)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--index-url",
        metavar="URL",
        help="a PEP 691/503 simple index (default: https://pypi.org/simple)",
    )
    where.add_argument("--find-links", type=Path, metavar="DIR", help="wheels here, offline")
    p.add_argument("--pre", action="store_true", help="pre-releases count as candidates too")
    p.add_argument("--allow-sdist", action="store_true", help="build releases that have no wheel")
    p.add_argument("--from-lock", type=Path, metavar="OLD", help="requirements file: the base")
    p.add_argument("--to-lock", type=Path, metavar="NEW", help="requirements file: the bump")
    p.add_argument(
        "--overlay-dir",
        type=Path,
        metavar="DIR",
        help="overlay cache (default: ~/.cache/stagebench/overlays)",
    )
    p.add_argument(
        "--format",
        choices=["table", "md", "markdown", "json"],
        default="table",
        help="a table for people (default), markdown for a job summary, or JSON",
    )
    _workload_args(p)


def _device(requested: str | None) -> str:
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def workload_from(args: argparse.Namespace) -> Workload:
    device = _device(args.device)
    model = args.model or default_preset(device)
    try:
        config = load_config(model)
    except ModelError as exc:
        raise BadInput(f"--model: {exc}" if args.model else str(exc)) from None
    fields = defaults_for(device)
    if args.workload is not None:
        try:
            fields.update(named(args.workload))
        except ValueError as exc:
            raise BadInput(f"--workload: {exc}") from None
    for name in (
        "dtype",
        "batch_size",
        "seq_len",
        "warmup_steps",
        "min_steps",
        "max_steps",
        "target_ci_pct",
        "seed",
        "timeout_s",
        "peak_tflops",
        "compile_cache",
        "nproc",
        "profile_steps",
        "host_gc",
    ):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.max_steps is not None and args.min_steps is None:
        # Only --max-steps given: a smaller cap lowers the default minimum with it.
        fields["min_steps"] = max(1, min(fields.get("min_steps", 10), args.max_steps))
    try:
        workload = Workload(model=model, device=device, **fields)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and workload.seq_len > limit:
        raise BadInput(
            f"--seq-len {workload.seq_len} is above {model}'s max_position_embeddings ({limit})"
        )
    return workload


def resolve_stages(names: list[str]) -> list[stages.Stage]:
    try:
        return [stages.resolve(name) for name in names]
    except stages.StageError as exc:
        raise BadInput(str(exc)) from None


def _subset(value: str | None, device: str) -> list[str]:
    if value is None:
        return MATRICES[stages.default_matrix(device)]
    if value in MATRICES:
        return MATRICES[value]
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise BadInput(f"--subset {value!r} names no stage; give {' | '.join(MATRICES)} or ids")
    return names


def _check_store(path: Path | None, flag: str = "--jsonl") -> None:
    """Fail before any stage runs, not after the first one finished; never changes the file.
    `flag`: how the message names where the path came from."""
    if path is None:
        return
    if path.is_dir():
        raise BadInput(f"{flag} {path} is a directory; give a file path")
    if path.exists() and not path.is_file():  # a FIFO would block, a device is no store
        raise BadInput(f"{flag} {path} is not a regular file; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Opened the way results.append opens it (read for the torn-line check, append)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644))
    except OSError as exc:
        raise BadInput(f"{flag} {path} is not writable ({exc.strerror or exc})") from None


def _check_log_dir(path: Path | None, flag: str = "--log-dir") -> None:
    """A directory that cannot take what goes there (logs, overlays) fails before any stage
    runs. `flag`: how the message names where the path came from."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise BadInput(f"{flag} {path} is not a directory; give a directory path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise BadInput(f"{flag} {path} is not writable ({exc.strerror or exc})") from None


def _check_apart(store: Path | None, log_dir: Path | None, stage_list: list[stages.Stage]) -> None:
    """Each stage's log is rewritten on every run: it must not be the results file."""
    from stagebench.isolate import log_name

    if store is None or log_dir is None:
        return
    if store.resolve() in {(log_dir / log_name(s)).resolve() for s in stage_list}:
        raise BadInput(f"--jsonl {store} is a stage's log in --log-dir, which each run rewrites")


def _run(stage_list: list[stages.Stage], args: argparse.Namespace, console: Console) -> int:
    from stagebench.isolate import Cancelled
    from stagebench.matrix import run_matrix
    from stagebench.report import print_results

    workload = workload_from(args)
    _check_apart(args.jsonl, args.log_dir, stage_list)
    _check_store(args.jsonl)
    _check_log_dir(args.log_dir)
    ranks = f", FSDP2 over {workload.nproc} processes" if workload.nproc else ""
    console.print(
        f"stagebench {__version__}: {len(stage_list)} stage(s) on {workload.model} "
        f"({workload.device}, {workload.dtype}, batch {workload.batch_size} x seq "
        f"{workload.seq_len}{' per rank' if ranks else ''}{ranks})",
        highlight=False,
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("starting", total=len(stage_list))

        def started(stage: stages.Stage) -> None:
            progress.update(task, description=f"running {stage.name}")

        def finished(result: Result) -> None:
            progress.advance(task)
            progress.console.print(f"  {result.stage}: {result.status}", highlight=False)

        unstored: list[StoreError] = []
        try:
            done = run_matrix(
                stage_list,
                workload,
                store=args.jsonl,
                log_dir=args.log_dir,
                on_start=started,
                on_result=finished,
                on_store_error=lambda result, exc: unstored.append(exc),
            )
        except Cancelled as exc:
            print(f"stagebench: {exc}; no further stage was started", file=sys.stderr)
            return exc.exit_code
    print_results(done, console)
    if unstored:  # the Results themselves went to stderr as they ended
        return _not_stored(unstored, args.jsonl)
    if args.jsonl:
        console.print(f"results appended to {args.jsonl}", highlight=False)
    return EXIT_FAILED if any(r.failed for r in done) else 0


def _not_stored(unstored: list[StoreError], path: Path | None) -> int:
    """One line for the Results the store could not take (each went to stderr whole)."""
    print(
        f"stagebench: error: could not store {len(unstored)} result(s) in {path}: "
        f"{unstored[-1].reason}",
        file=sys.stderr,
    )
    return EXIT_NOT_DONE


def _list(args: argparse.Namespace, console: Console) -> int:
    import torch
    from rich.table import Table

    from stagebench.optim import unavailable_reason

    device = torch.device(_device(args.device))
    table = Table(title=f"stages on {device.type}", title_justify="left")
    for column in ("Stage", "Spec", "Runs here", "Why not"):
        table.add_column(column)
    for stage in stages.seed_stages():
        reason = unavailable_reason(stage, device)
        table.add_row(stage.name, stage.spec, "no" if reason else "yes", reason or "")
    console.print(table)
    console.print("Compose any stage from parts joined by '+':", highlight=False)
    for part in stages.PART_ORDER:
        console.print(f"  {part:16} {stages.describe(part)}", highlight=False, markup=False)
    console.print(
        "Options follow their part after ':', as key=value, several joined by ':' (e.g. "
        "sdpa+liger:accum=bf16+compile:fullgraph=off:mode=default); defaults are the seed's, "
        "and a stage's name lists only options that differ:",
        highlight=False,
        markup=False,
    )
    for line in stages.option_lines():
        console.print(f"  {line}", highlight=False, markup=False)
    return 0


def _env(args: argparse.Namespace, console: Console) -> int:
    from stagebench.report import env_table

    info = env.collect()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        console.print(env_table(info))
    return 0


def _needs_asv(command: str) -> None:
    try:
        import asv  # noqa: F401
    except ModuleNotFoundError:
        raise BadInput(f"{command} reads asv's results and needs asv: pip install asv") from None


def _regressions(args: argparse.Namespace) -> int:
    _needs_asv("regressions")
    from stagebench import history, regress

    try:
        order = history.git_order()  # the checkout's commit order, where there is one
        report = regress.check(
            args.results, machine=args.machine, benchmark=args.benchmark, order=order
        )
    except regress.HistoryError as exc:
        raise BadInput(str(exc)) from None
    except regress.CannotJudge as exc:
        raise CannotJudgeError(str(exc)) from None
    # print, not rich: markdown's brackets and backticks must reach the job summary as written
    print(regress.to_json(report) if args.format == "json" else regress.to_markdown(report))
    alarming = report.new if args.new_only else report.regressions
    return 1 if alarming else 0


def _looks_like_file(value: str) -> bool:
    if not value.strip():
        return False
    path = Path(value)
    return path.exists() or path.suffix in (".jsonl", ".json") or len(path.parts) > 1


def _compare(args: argparse.Namespace) -> int:
    _needs_asv("compare")
    from stagebench import compare, explain, history, noise

    try:
        (file_a, stage_a), (file_b, stage_b) = map(
            compare.split_selector, (args.before, args.after)
        )
    except history.HistoryError as exc:
        raise BadInput(str(exc)) from None
    files = [_looks_like_file(v) for v in (file_a, file_b)]
    explanations: list[explain.Explanation] = []
    unexplained = None
    try:
        if any(files) or stage_a or stage_b:
            if not all(files):
                raise BadInput(
                    f"compare takes two result files (FILE or FILE#STAGE) or two commits, not "
                    f"one of each: {args.before!r}, {args.after!r}"
                )
            pairs = compare.pairs_from_files(Path(file_a), Path(file_b), stage_a, stage_b)
            if args.results.exists() and not args.results.is_dir():
                raise BadInput(f"--results {args.results} is not a directory (its noise records)")
            records = noise.load(args.results) if args.results.is_dir() else []
            rows = compare.pair_rows(pairs, Path(file_a), Path(file_b), records)
        else:
            rows = compare.commits(
                args.results,
                args.before,
                args.after,
                machine=args.machine,
                order=history.git_order(),
            )
            pairs = []
            if args.explain:  # the commits' Results, kept in the history beside asv's numbers
                try:
                    store = args.results / results.STORE_NAME
                    pairs = explain.pairs_from_store(store, args.before, args.after)
                except (history.HistoryError, history.CannotJudge) as exc:
                    unexplained = str(exc)  # the verdict stands without an explanation
        if args.explain:
            explanations = explain.explain_all(pairs)
    except history.HistoryError as exc:
        raise BadInput(str(exc)) from None
    except history.CannotJudge as exc:
        raise CannotJudgeError(str(exc)) from None
    if args.format == "json":
        extra = {"explain": explain.to_dicts(explanations)} if args.explain else {}
        if unexplained:
            extra["explain_note"] = unexplained
        print(compare.to_json(rows, extra))
    else:
        print(compare.to_markdown(rows, args.before, args.after))
        if args.explain:
            print()
            print(explain.to_markdown(explanations, args.before, args.after, unexplained))
    return compare.exit_code(rows)


def _store_noise(results_dir: Path, records: list[StageNoise], console: Console) -> bool:
    """Append the records to the noise log; any that cannot be stored go to stderr, one JSON
    line each, so what was measured is not lost. True when all were stored."""
    from stagebench import noise

    log = results_dir / noise.LOG_NAME
    lost = []
    for record in records:
        try:
            noise.append(results_dir, [record])
        except StoreError as exc:
            lost.append((record, exc))
    if lost:
        print(
            f"stagebench: error: could not store {len(lost)} noise record(s) in {log}: "
            f"{lost[-1][1].reason}; they follow",
            file=sys.stderr,
        )
        for record, _ in lost:
            print(json.dumps(record.to_dict(), sort_keys=True), file=sys.stderr)
        return False
    console.print(f"noise records appended to {log}", highlight=False)
    return True


def _noise_from_files(args: argparse.Namespace, console: Console) -> list[StageNoise]:
    """`noise --from`: the records the stored Results make, each file its own measurement."""
    from stagebench import noise

    if args.stages or args.subset:
        raise BadInput("--from summarizes stored Results: give no STAGE or --subset")
    if args.jsonl is not None or args.runs is not None or args.log_dir is not None:
        raise BadInput("--from measures nothing: --jsonl, --runs and --log-dir do not apply")
    files: dict[Path, Path] = {}
    for path in args.from_files:
        if not path.exists():
            raise BadInput(f"--from {path}: no such file")
        if not path.is_file():
            raise BadInput(f"--from {path}: not a regular file")
        if path.resolve() in files:
            raise BadInput(f"--from {path}: given twice (its runs would count twice)")
        files[path.resolve()] = path
    records = []
    for path in files.values():  # one file, one measurement: its round 1 is its own
        try:
            made, skipped = noise.resummarize(results.load(path))
        except (OSError, ValueError) as exc:
            raise BadInput(f"--from {path}: {exc}") from None
        records += made
        for why in skipped:
            console.print(f"  no record from {path}: {why}", highlight=False)
    if not records:
        raise CannotJudgeError("no stage of the stored Results makes a record")
    return records


def _noise(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    from stagebench import machine, noise
    from stagebench.isolate import Cancelled

    if args.results.exists() and not args.results.is_dir():
        raise BadInput(f"--results {args.results} is not a directory")
    log = args.results / noise.LOG_NAME
    if log.exists() and not log.is_file():
        raise BadInput(f"--results {args.results}: {log} is not a regular file")
    unstored: list[StoreError] = []
    done: list[Result] = []
    if args.show and args.from_files:
        raise BadInput("--show prints the records, --from makes them: give one")
    if args.show:
        records = noise.load(args.results)
        if not records:
            raise CannotJudgeError(f"no noise records in {args.results / noise.LOG_NAME}")
    elif args.from_files:
        records = _noise_from_files(args, console)
        logged = {json.dumps(r.to_dict(), sort_keys=True) for r in noise.load(args.results)}
        again = [r for r in records if json.dumps(r.to_dict(), sort_keys=True) in logged]
        if again:  # the same summary of the same runs: a second copy would only add weight
            console.print(f"  {len(again)} record(s) already in {log}: not added again")
        new = [r for r in records if r not in again]
        _check_store(log, flag=f"--results {args.results}:")
        if new and not _store_noise(args.results, new, console):
            return EXIT_NOT_DONE
    else:
        runs = 5 if args.runs is None else args.runs
        if runs < noise.MIN_RUNS:
            raise BadInput(f"--runs {runs}: at least {noise.MIN_RUNS} (5 or more advised)")
        names = args.stages or _subset(args.subset, _device(args.device))
        if args.stages and args.subset:
            raise BadInput("give STAGE arguments or --subset, not both")
        stage_list = resolve_stages(names)
        workload = workload_from(args)
        if args.profile_steps is None:  # noise runs measure spread, not where the time goes
            workload = dataclasses.replace(workload, profile_steps=0)
        _check_apart(args.jsonl, args.log_dir, stage_list)
        if args.jsonl is not None and args.jsonl.resolve() == log.resolve():
            raise BadInput(f"--jsonl {args.jsonl} is the noise log itself; give another file")
        _check_store(args.jsonl)
        _check_log_dir(args.log_dir)
        # The records are written after every run: a directory that cannot take them must say
        # so now, not after hours of measuring.
        _check_store(log, flag=f"--results {args.results}:")
        try:
            name = machine.name(machine.facts())
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        console.print(
            f"stagebench noise: {len(stage_list)} stage(s) x {runs} processes on "
            f"{workload.model} ({workload.device}), machine {name}",
            highlight=False,
        )

        def finished(result: Result) -> None:
            console.print(f"  {result.stage}: {result.status}", highlight=False)

        try:
            done = noise.measure(
                stage_list, workload, runs, store=args.jsonl, log_dir=args.log_dir,
                on_result=finished, on_store_error=lambda result, exc: unstored.append(exc),
            )  # fmt: skip
        except Cancelled as exc:
            kept = f"; the runs' Results are in {args.jsonl}" if args.jsonl else ""
            print(
                f"stagebench: {exc}; no further run was started and no noise record was "
                f"written{kept}",
                file=sys.stderr,
            )
            return exc.exit_code
        records = noise.summarize(done, name)
        if not _store_noise(args.results, records, console):
            return EXIT_NOT_DONE
    table = Table(title="run-to-run noise (separate processes)", title_justify="left")
    for header in noise.TABLE_HEADER:
        table.add_column(header, justify="left" if header == "stage" else "right")
    for row in noise.table_rows(records):
        table.add_row(*row)
    console.print(table)
    console.print(
        "sigma: one run's spread of the per-process median (log scale); MDE95: the smallest "
        "difference of two single nightly runs that is significant at 95%; within-run CI: "
        "the runs' own 95% CI of their median, which misses what differs between processes; "
        "floor sigma / MDE95: the same two for each run's 10th-percentile step, the "
        "device-bound work that host delays do not move.",
        highlight=False,
    )
    if unstored:  # the Results themselves went to stderr as they ended
        return _not_stored(unstored, args.jsonl)
    return EXIT_FAILED if any(r.failed for r in done) else 0


def _bisect_release(args: argparse.Namespace, console: Console) -> int:
    _needs_asv("bisect-release")  # the judge's rule decides what counts as a change
    from stagebench import depbisect, overlay, releases
    from stagebench.isolate import CANCEL_SIGNALS, Cancelled
    from stagebench.metrics import METRICS

    locks = (args.from_lock, args.to_lock)
    if any(locks) and not all(locks):
        raise BadInput("--from-lock and --to-lock go together: OLD and NEW requirements files")
    if all(locks) and args.target:
        raise BadInput("give PACKAGE GOOD BAD, or --from-lock OLD --to-lock NEW, not both")
    if not all(locks) and len(args.target) != 3:
        raise BadInput(
            f"bisect-release takes PACKAGE GOOD BAD (got {len(args.target)} argument(s)), "
            "or --from-lock OLD --to-lock NEW"
        )
    stage = resolve_stages([args.stage])[0]
    metric = METRICS[args.metric]
    if args.find_links is not None and not args.find_links.is_dir():
        raise BadInput(f"--find-links {args.find_links} is not a directory")
    source = releases.Source(
        index_url=(args.index_url or releases.PYPI).rstrip("/"),
        find_links=args.find_links.resolve() if args.find_links else None,
    )
    workload = workload_from(args)
    _check_store(args.jsonl)
    _check_log_dir(args.log_dir)
    cache = overlay.cache_root(args.overlay_dir)
    _check_log_dir(
        cache, "--overlay-dir" if args.overlay_dir else "the overlay cache (--overlay-dir)"
    )
    measure = depbisect.Measurer(
        stage,
        workload,
        metric,
        source=source,
        store=args.jsonl,
        log_dir=args.log_dir,
        overlay_dir=args.overlay_dir,
        allow_sdist=args.allow_sdist,
    )

    def progress(trial: depbisect.Trial) -> None:
        print(f"  {depbisect.describe(trial, metric)}", file=sys.stderr, flush=True)

    def warn(line: str) -> None:
        print(f"stagebench: warning: {line}", file=sys.stderr)

    def cancel(signum: int, _frame) -> None:  # between stages: building an overlay, pip
        raise Cancelled(signum)

    # Within a stage the isolated runner takes the signal over (and stores that stage).
    previous = {sig: signal.signal(sig, cancel) for sig in CANCEL_SIGNALS}
    try:
        if all(locks):
            outcome = depbisect.bisect_lock(
                args.from_lock,
                args.to_lock,
                measure,
                measure.base,
                metric,
                overlay.base_info().packages,
                stage=stage.name,
                source=source,
                pre=args.pre,
                allow_sdist=args.allow_sdist,
                on_trial=progress,
                warn=warn,
            )
        else:
            package, good, bad = args.target
            rng = releases.between(
                package, good, bad, source, pre=args.pre, allow_sdist=args.allow_sdist
            )
            print(
                f"stagebench: bisecting {stage.name} over {len(rng.candidates)} release(s) of "
                f"{rng.package}, {rng.good} .. {rng.bad} ({workload.model}, {workload.device})",
                file=sys.stderr,
            )
            outcome = depbisect.bisect_releases(
                rng, measure, metric, stage=stage.name, on_trial=progress
            )
    except (releases.ReleaseError, depbisect.LockError) as exc:
        raise BadInput(str(exc)) from None
    except overlay.OverlayError as exc:
        print(f"stagebench: error: {exc}", file=sys.stderr)
        return EXIT_NOT_DONE
    except Cancelled as exc:
        print(f"stagebench: {exc}; no further release was measured", file=sys.stderr)
        return exc.exit_code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.format == "json":
        print(depbisect.to_json(outcome))
    elif args.format in ("md", "markdown"):
        print(depbisect.to_markdown(outcome))
    else:
        from stagebench.report import plain_table

        title = f"{outcome.package or 'lock bump'}: {stage.name}, {metric.name}"
        console.print(plain_table(depbisect.columns(outcome), depbisect.rows(outcome), title))
        for line in depbisect.summary_lines(outcome):
            console.print(line, markup=False, highlight=False)
    if measure.unstored:
        return _not_stored(measure.unstored, args.jsonl)
    return outcome.exit_code


def main(argv: list[str] | None = None) -> int:
    # A pipe or CI log is not 80 columns wide; don't squeeze the table into it.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
    try:
        args = build_parser().parse_args(argv)
        if args.command == "run":
            return _run(resolve_stages(args.stages), args, console)
        if args.command == "matrix":
            names = _subset(args.subset, _device(args.device))
            return _run(resolve_stages(names), args, console)
        if args.command == "list":
            return _list(args, console)
        if args.command == "regressions":
            return _regressions(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "noise":
            return _noise(args, console)
        if args.command == "bisect-release":
            return _bisect_release(args, console)
        return _env(args, console)
    except BadInput as exc:
        print(f"stagebench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CannotJudgeError as exc:
        print(f"stagebench: cannot judge: {exc}", file=sys.stderr)
        return EXIT_CANNOT_JUDGE
    except StoreError as exc:
        print(f"stagebench: error: {exc}", file=sys.stderr)
        return EXIT_NOT_DONE
    except KeyboardInterrupt:  # Ctrl-C outside a stage (an overlay's pip, loading a config ...)
        print("stagebench: cancelled by SIGINT", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as exc:  # a bug or the machine, never "a stage failed" (1)
        traceback.print_exc()
        print(f"stagebench: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_NOT_DONE


if __name__ == "__main__":
    sys.exit(main())
