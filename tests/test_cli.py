"""CLI: bad input exits 2 with one readable line and never touches the results file."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal

import pytest
import torch
from fake_disk import FakeDisk, fill, read_only_dir, tiny_tmpfs

from stagebench import results, stages
from stagebench.cli import main
from stagebench.results import Result

SEED_IDS = list(stages.SEED_STAGES)


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def error_line(capsys, argv: list[str]) -> str:
    """Run a bad command; it must exit 2 with exactly one 'stagebench: error:' line on stderr."""
    code, out, err = run_cli(capsys, argv)
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("stagebench: error:"), err
    assert out == ""  # nothing ran, nothing was printed as if it had
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "patterns"),
    [
        (["run", "00_nope"], ["'00_nope'", *SEED_IDS]),
        (["run", "sdpa+ligr"], ["'ligr'", "valid parts"]),
        (["run", "00_sdpa", "--device", "cpu", "--max-steps", "0"], [r"max[-_]steps\W+0\b"]),
        (["run", "00_sdpa", "--device", "cpu", "--batch-size", "-1"], [r"batch[-_]size\W+-1\b"]),
        (["run", "00_sdpa", "--device", "cpu", "--seq-len", "1"], [r"seq[-_]len\W+1\b"]),
        (["run", "00_sdpa", "--device", "tpu"], ["--device", "'tpu'"]),
        (["run", "00_sdpa", "--device", "cpu", "--batch-size", "two"], ["--batch-size", "'two'"]),
        ([], ["required", "command"]),
        (["run"], ["required", "STAGE"]),
        (["run", "00_sdpa", "--device", "cpu", "--peak-tflops", "-5"], [r"peak[-_]tflops\W+-5"]),
        (["matrix", "--device", "cpu", "--subset", "00_sdpa,bogus"], ["'bogus'", *SEED_IDS]),
        (["run", "00_sdpa", "--device", "cpu", "--nproc", "0"], [r"nproc\W+0\b", "at least 1"]),
        (["run", "00_sdpa", "--workload", "b4x512"], ["--workload", "'b4x512'", "b2x1024"]),
        (["run", "sdpa+compile:fullgraph=maybe"], ["'maybe'", "auto|on|off"]),
        (["run", "00_sdpa", "--device", "cpu", "--profile-steps", "-1"],
         [r"profile[-_]steps\W+-1\b", "0 \\(off\\) or more"]),
    ],
    ids=[
        "unknown-stage", "unknown-part", "max-steps-0", "batch-size-neg", "seq-len-1",
        "bad-device", "non-int-batch", "no-subcommand", "no-stage", "peak-neg", "bad-subset",
        "nproc-0", "bad-workload", "bad-option", "profile-steps-neg",
    ],
)  # fmt: skip
def test_bad_input(capsys, argv, patterns):
    """Each bad input names its problem (--max-steps 0 fails today: it reports min_steps=0)."""
    line = error_line(capsys, argv)
    for pattern in patterns:
        assert re.search(pattern, line), f"{pattern!r} not in {line!r}"


def test_unknown_model(capsys, tmp_path):
    """An unknown model is named along with the presets (a missing local path: no hub lookup)."""
    missing = str(tmp_path / "no-such-model")
    line = error_line(capsys, ["run", "00_sdpa", "--device", "cpu", "--model", missing])
    assert missing in line
    for preset in ("qwen3-8b", "qwen3-0.6b", "tiny"):
        assert preset in line


def test_jsonl_directory(capsys, tmp_path):
    """--jsonl at a directory fails before any stage runs, naming the path."""
    line = error_line(capsys, ["run", "00_sdpa", "--device", "cpu", "--jsonl", str(tmp_path)])
    assert str(tmp_path) in line
    assert "directory" in line


def test_empty_subset_is_bad_input(capsys):
    """`--subset ,` selects nothing; a 0-stage run reporting success hides a typo in CI.

    Fails today: it runs zero stages and exits 0.
    """
    line = error_line(capsys, ["matrix", "--device", "cpu", "--subset", ","])
    assert "subset" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "00_nope"],
        ["run", "00_sdpa", "--device", "cpu", "--batch-size", "-1"],
        ["run", "00_sdpa", "--device", "tpu"],
        ["matrix", "--device", "cpu", "--subset", "bogus"],
    ],
)
def test_bad_input_leaves_jsonl_untouched(capsys, tmp_path, argv):
    """Earlier results must survive a typo: bad input never truncates or writes the store."""
    store = tmp_path / "results.jsonl"
    content = b'{"kept": "earlier rows"}\n{"also": 2}\n'
    store.write_bytes(content)
    error_line(capsys, [*argv, "--jsonl", str(store)])
    assert store.read_bytes() == content


@pytest.mark.parametrize(
    ("argv", "shape"),
    [
        (["--device", "cuda"], (1, 2048)),  # the seed's table
        (["--device", "cuda", "--workload", "b2x1024"], (2, 1024)),  # the history's
        (["--device", "cuda", "--workload", "b2x1024", "--seq-len", "512"], (2, 512)),
        (["--device", "cpu"], (2, 1024)),
        (["--device", "cpu", "--workload", "b1x2048"], (1, 2048)),
    ],
)
def test_workload_shapes_by_name(argv, shape):
    from stagebench.cli import build_parser, workload_from

    w = workload_from(build_parser().parse_args(["run", "00_sdpa", *argv]))
    assert (w.batch_size, w.seq_len) == shape


@pytest.mark.parametrize(("argv", "steps"), [([], 3), (["--profile-steps", "0"], 0)])
def test_profile_steps_reach_the_workload(argv, steps):
    """Profiling is a workload setting: 0 turns it off (a schedule profiles some runs only)."""
    from stagebench.cli import build_parser, workload_from

    w = workload_from(build_parser().parse_args(["run", "00_sdpa", "--device", "cpu", *argv]))
    assert w.profile_steps == steps


@pytest.mark.parametrize(("argv", "mode"), [([], "default"), (["--host-gc", "freeze"], "freeze")])
def test_the_collector_setting_reaches_the_workload(argv, mode):
    from stagebench.cli import build_parser, workload_from

    w = workload_from(build_parser().parse_args(["run", "00_sdpa", "--device", "cpu", *argv]))
    assert w.host_gc == mode


def test_list_shows_the_options(capsys):
    code, out, _ = run_cli(capsys, ["list", "--device", "cpu"])
    assert code == 0
    flat = " ".join(out.split())
    for text in ("liger:accum=fp32|bf16", "cce:accum=fp32|bf16", "fullgraph=auto|on|off",
                 "sdpa+liger:accum=bf16+compile:fullgraph=off"):  # fmt: skip
        assert text in flat, text


def test_list_cpu(capsys):
    """`list` shows every seed stage, which run on a CPU, and why the others cannot."""
    code, out, _ = run_cli(capsys, ["list", "--device", "cpu"])
    assert code == 0
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 6 and cells[1] in SEED_IDS:
            rows[cells[1]] = cells[2:5]
    assert list(rows) == SEED_IDS
    assert rows["00_sdpa"] == ["sdpa", "yes", ""]
    assert rows["00_baseline"] == ["eager", "yes", ""]
    # kernelize and cce have CPU implementations; everything with fa2, fa3 or liger needs CUDA.
    has = {m: importlib.util.find_spec(m) is not None for m in ("kernels", "cut_cross_entropy")}
    cpu_capable = {"00_sdpa", "00_baseline"}
    if has["kernels"]:
        cpu_capable.add("01_kernelize_sdpa_compile")
        if has["cut_cross_entropy"]:
            cpu_capable.add("05_kernelize_cce_sdpa_compile")
    for stage_id in SEED_IDS:
        spec, runs, why = rows[stage_id]
        assert spec == stages.resolve(stage_id).spec
        if stage_id in cpu_capable:
            assert (runs, why) == ("yes", ""), stage_id
            continue
        assert runs == "no", stage_id
        assert re.fullmatch(r"[a-z0-9-]+: (needs CUDA|[a-z-]+ not installed .*)", why), why
        assert why.split(":")[0] in spec.split("+"), why  # the reason names one of its parts
    assert rows["00_fa2"][2] == "fa2: needs CUDA"


def test_env_json(capsys):
    """`env --json` is machine-readable and records the torch version."""
    code, out, _ = run_cli(capsys, ["env", "--json"])
    assert code == 0
    info = json.loads(out)
    assert info["packages"]["torch"] == torch.__version__


@pytest.mark.parametrize("prefix", ["/", "./", "~/", "a/b/"], ids=["abs", "dot", "tilde", "nested"])
def test_a_missing_model_directory_says_no_such_directory(capsys, tmp_path, prefix):
    """Failed before: transformers read '/missing' as a malformed hub id ("Repo id must use
    alphanumeric chars ...")."""
    name = f"{prefix}no-such-checkpoint-{tmp_path.name}"
    line = error_line(capsys, ["run", "00_sdpa", "--device", "cpu", "--model", name])
    assert "--model" in line and "no such directory" in line and name in line


def test_a_model_path_that_is_a_file_says_so(capsys, tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"")
    line = error_line(capsys, ["run", "00_sdpa", "--device", "cpu", "--model", str(path)])
    assert "is not a directory" in line


def test_seq_len_beyond_the_models_positions_is_bad_input(capsys):
    """Failed before: accepted, and every stage failed at its first step."""
    argv = ["run", "00_sdpa", "--device", "cpu", "--model", "tiny", "--seq-len", "4097"]
    line = error_line(capsys, argv)
    assert "--seq-len 4097" in line and "max_position_embeddings (4096)" in line


def test_log_dir_that_is_a_file(capsys, tmp_path):
    """Failed before: the first stage crashed parent-side on mkdir (FileExistsError, exit 1)."""
    log = tmp_path / "logs"
    log.write_text("not a directory")
    line = error_line(capsys, ["run", "00_sdpa", "--device", "cpu", "--log-dir", str(log)])
    assert f"--log-dir {log} is not a directory" in line


def test_log_dir_that_cannot_be_written(capsys, tmp_path):
    with read_only_dir(tmp_path) as ro:
        line = error_line(capsys, ["run", "00_sdpa", "--device", "cpu", "--log-dir", str(ro)])
    assert f"--log-dir {ro} is not writable" in line


def test_jsonl_in_a_directory_that_cannot_be_written(capsys, tmp_path):
    with read_only_dir(tmp_path) as ro:
        store = ro / "results.jsonl"
        line = error_line(capsys, ["run", "00_sdpa", "--device", "cpu", "--jsonl", str(store)])
    assert f"--jsonl {store} is not writable" in line


def test_jsonl_that_is_a_fifo_does_not_block(capsys, tmp_path):
    """Opening a FIFO for appending waits for a reader forever; a store is a regular file."""
    fifo = tmp_path / "results.jsonl"
    os.mkfifo(fifo)
    line = error_line(capsys, ["run", "00_sdpa", "--device", "cpu", "--jsonl", str(fifo)])
    assert "is not a regular file" in line


def test_jsonl_that_is_a_stage_log_is_refused(capsys, tmp_path):
    """Each stage's log is opened for writing on every run: as the store it would wipe every
    earlier result. Failed before: the results file was truncated to the new log."""
    store = tmp_path / "00_sdpa.log"
    store.write_bytes(b'{"kept": 1}\n')
    argv = ["run", "00_sdpa", "--device", "cpu", "--log-dir", str(tmp_path), "--jsonl", str(store)]
    assert "a stage's log in --log-dir" in error_line(capsys, argv)
    assert store.read_bytes() == b'{"kept": 1}\n'


def test_jsonl_under_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    store = tmp_path / "file" / "results.jsonl"
    line = error_line(capsys, ["run", "00_sdpa", "--device", "cpu", "--jsonl", str(store)])
    assert f"--jsonl {store} is not writable" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "00_sdpa", "--device", "cpu", "--seq-len", "99999"],
        ["run", "00_sdpa", "--device", "cpu", "--model", "/no/such/model"],
        ["run", "00_sdpa", "--device", "cpu", "--log-dir", "/dev/null"],
        ["matrix", "--device", "cpu", "--subset", ","],
    ],
)
def test_more_bad_input_leaves_jsonl_untouched(capsys, tmp_path, argv):
    """Earlier results (valid or not, even bytes that are not UTF-8) survive any bad input."""
    store = tmp_path / "results.jsonl"
    content = b'{"kept": "earlier rows"}\n\xff\xfe not utf-8\n'
    store.write_bytes(content)
    error_line(capsys, [*argv, "--jsonl", str(store)])
    assert store.read_bytes() == content


# Runs whose stages are FAKE (`fake_run_isolated`, instant): what is under test is what the CLI
# does with the store and the exit code.

CPU_RUN = ["--device", "cpu", "--model", "tiny", "--seq-len", "64"]


@pytest.fixture
def fake_run_isolated(monkeypatch):
    """Every stage is 'measured' instantly: ok, step-0 loss 7.5."""
    from test_results import make_metrics

    from stagebench import matrix

    def fake(stage, workload, **kwargs):
        return Result(
            stage=stage.name, spec=stage.spec, status="ok", reason=None, model=workload.model,
            workload=workload.to_dict(), metrics=make_metrics(loss_first=7.5),
        )  # fmt: skip

    monkeypatch.setattr(matrix, "run_isolated", fake)


def test_a_full_disk_exits_4_and_prints_every_result(
    capsys, tmp_path, monkeypatch, fake_run_isolated
):
    """Failed before: the first append raised OSError out of main (a traceback, exit 1) and the
    rest of the matrix never ran; a short write said "results appended" and exited 0."""
    store = tmp_path / "results.jsonl"
    FakeDisk(monkeypatch, store, space=0)
    code, out, err = run_cli(
        capsys, ["run", "00_sdpa", "00_baseline", *CPU_RUN, "--jsonl", str(store)]
    )
    assert code == 4
    assert "results appended" not in out
    lines = err.splitlines()
    assert lines[-1] == (
        f"stagebench: error: could not store 2 result(s) in {store}: No space left on device"
    )
    printed = [Result.from_dict(json.loads(line)) for line in lines if line.startswith("{")]
    assert [r.stage for r in printed] == ["00_sdpa", "00_baseline"]
    assert store.read_bytes() == b""


def test_a_real_full_filesystem_exits_4(capsys, tmp_path, fake_run_isolated):
    with tiny_tmpfs(tmp_path / "disk") as disk:
        store = disk / "results.jsonl"
        store.write_bytes(b"")
        fill(disk)
        code, out, err = run_cli(capsys, ["run", "00_sdpa", *CPU_RUN, "--jsonl", str(store)])
        assert code == 4, err
        assert "results appended" not in out
        assert "could not store 1 result(s)" in err.splitlines()[-1]
        assert store.read_bytes() == b""


def test_a_store_with_bad_lines_is_appended_to_not_rewritten(capsys, tmp_path, fake_run_isolated):
    """Failed before: the non-UTF-8 line made `run` crash before its first stage."""
    store = tmp_path / "results.jsonl"
    content = b'\xef\xbb\xbf\xff not utf-8\n{"torn": \n'
    store.write_bytes(content)
    with pytest.warns(UserWarning) as record:
        code, out, _ = run_cli(capsys, ["run", "00_sdpa", *CPU_RUN, "--jsonl", str(store)])
    assert "results.jsonl:1: skipped a line that is not UTF-8" in str(record[0].message)
    assert code == 0 and f"results appended to {store}" in out
    assert store.read_bytes().startswith(content)
    with pytest.warns(UserWarning):
        assert [r.stage for r in results.load(store)] == ["00_sdpa"]


def test_an_unexpected_exception_exits_4_with_its_traceback(capsys, monkeypatch):
    """Failed before: the exception escaped main (Python's exit 1, read as "a stage failed")."""
    from stagebench import matrix

    def fake_bug(*args, **kwargs):
        raise RuntimeError("fake bug")

    monkeypatch.setattr(matrix, "run_matrix", fake_bug)
    code, _, err = run_cli(capsys, ["run", "00_sdpa", *CPU_RUN])
    assert code == 4
    assert "Traceback" in err and 'raise RuntimeError("fake bug")' in err
    assert err.splitlines()[-1] == "stagebench: internal error: RuntimeError: fake bug"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_cancelled_run_exits_128_plus_the_signal(capsys, monkeypatch, signum):
    from stagebench import matrix
    from stagebench.isolate import Cancelled

    def fake_cancelled(*args, **kwargs):
        raise Cancelled(signum)

    monkeypatch.setattr(matrix, "run_matrix", fake_cancelled)
    code, _, err = run_cli(capsys, ["run", "00_sdpa", *CPU_RUN])
    assert code == 128 + signum
    assert f"cancelled by {signal.Signals(signum).name}" in err
