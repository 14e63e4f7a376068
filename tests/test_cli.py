"""CLI: bad input exits 2 with one readable line and never touches the results file."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import torch

from stagebench import stages
from stagebench.cli import main

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
    ],
    ids=[
        "unknown-stage", "unknown-part", "max-steps-0", "batch-size-neg", "seq-len-1",
        "bad-device", "non-int-batch", "no-subcommand", "no-stage", "peak-neg", "bad-subset",
        "nproc-0",
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
