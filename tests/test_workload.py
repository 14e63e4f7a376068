"""Workload: the seed's defaults, validation that names the field, and the numerics key."""

from __future__ import annotations

import dataclasses
import json

import pytest

from stagebench.workload import WORKLOADS, Workload, defaults_for, named, shape_name


def test_defaults_are_the_seeds():
    """Out of the box a run trains the seed's table's shape: batch 1 x 2048 tokens, bf16 on
    CUDA (the seed's configs set batch_size = 1 with the data default seq_len = 2048)."""
    w = Workload(model="qwen3-8b")
    assert (w.batch_size, w.seq_len) == (1, 2048)
    assert (w.device, w.dtype) == ("cuda", "bfloat16")
    assert w.timeout_s == 1800.0
    assert w.min_steps >= 10  # the seed's 10-step window must fit
    assert w.tokens_per_step == 2048


def test_cpu_defaults_make_a_valid_workload():
    """The per-device CPU defaults must themselves pass validation."""
    w = Workload(model="tiny", device="cpu", **defaults_for("cpu"))
    assert w.dtype == "float32"
    assert w.max_steps >= w.min_steps


@pytest.mark.parametrize(
    ("device", "shape"), [("cuda", (1, 2048)), ("cpu", (2, 1024))], ids=["cuda", "cpu"]
)
def test_per_device_shapes(device, shape):
    """CUDA: the seed's b1x2048; a CPU keeps its quick shape (the tiny preset's history)."""
    w = Workload(model="tiny", device=device, **defaults_for(device))
    assert (w.batch_size, w.seq_len) == shape
    assert w.tokens_per_step == 2048


@pytest.mark.parametrize(("name", "shape"), [("b1x2048", (1, 2048)), ("b2x1024", (2, 1024))])
def test_named_workloads(name, shape):
    """b2x1024 stays reachable by name: it is what the history measured up to protocol 1."""
    fields = named(name)
    assert (fields["batch_size"], fields["seq_len"]) == shape
    w = Workload(model="qwen3-8b", **fields)
    assert shape_name(w) == name
    fields["batch_size"] = 99  # a copy: the table itself is not changed by a caller
    assert WORKLOADS[name]["batch_size"] == shape[0]


def test_an_unknown_workload_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown workload 'b4x512'; valid: b1x2048, b2x1024"):
        named("b4x512")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0),
        ("batch_size", -1),
        ("seq_len", 1),
        ("warmup_steps", 0),
        ("min_steps", 0),
        ("max_steps", 5),  # below min_steps=10
        ("target_ci_pct", 0.0),
        ("timeout_s", 0.0),
        ("dtype", "int8"),
        ("device", "tpu"),
        ("peak_tflops", 0.0),
        ("peak_tflops", -5.0),
        ("host_gc", "disabled"),
    ],
)
def test_invalid_value_names_the_field(field, value):
    """A bad value is rejected with the field's name and value, so the CLI can show it."""
    with pytest.raises(ValueError) as info:
        Workload(model="tiny", **{field: value})
    assert f"{field}={value!r}" in str(info.value)


def test_numerics_key_ignores_steps_and_timeouts():
    """How long a stage runs does not change its weights or data: same step-0 loss expected."""
    base = Workload(model="tiny", device="cpu", dtype="float32")
    same = dataclasses.replace(
        base, warmup_steps=7, min_steps=3, max_steps=99, target_ci_pct=2.0, timeout_s=5.0,
        peak_tflops=100.0, compile_cache="/tmp/cache",
    )  # fmt: skip
    assert same.numerics_key() == base.numerics_key()


@pytest.mark.parametrize(
    "change",
    [
        {"seq_len": 512},
        {"seed": 1},
        {"model": "qwen3-0.6b"},
        {"dtype": "bfloat16"},
        {"batch_size": 4},
        {"device": "cuda"},
    ],
)
def test_numerics_key_changes_with_weights_or_data(change):
    """Different weights or data must never be compared for step-0 loss agreement."""
    base = Workload(model="tiny", device="cpu", dtype="float32")
    assert dataclasses.replace(base, **change).numerics_key() != base.numerics_key()


def test_round_trip():
    """A workload stored in a Result reads back equal, through JSON too."""
    w = Workload(model="tiny", device="cpu", dtype="float32", seq_len=64, peak_tflops=12.5)
    assert Workload.from_dict(json.loads(json.dumps(w.to_dict()))) == w
    assert Workload.from_dict(Workload(model="qwen3-8b").to_dict()) == Workload(model="qwen3-8b")


# from_dict reads JSON (a stored Result's workload, STAGEBENCH_WORKLOAD): anything can be there.


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": "tiny", "flash": True}, "unknown workload field(s) 'flash'; valid: model"),
        ({"seq_len": 64}, "workload lacks model"),
        ({"model": "tiny", "seq_len": "64"}, "invalid seq_len='64': must be an integer"),
        ({"model": "tiny", "seq_len": 64.5}, "invalid seq_len=64.5: must be an integer"),
        ({"model": "tiny", "batch_size": True}, "invalid batch_size=True: must be an integer"),
        ({"model": 7}, "invalid model=7: must be a string"),
        ({"model": "tiny", "peak_tflops": "x"}, "peak_tflops='x': must be a number or null"),
        ({"model": "tiny", "seq_len": None}, "invalid seq_len=None: must be an integer"),
        ({"model": "tiny", "timeout_s": float("inf")}, "timeout_s=inf: must be a finite"),
        ([1, 2], "a workload is a JSON object of fields, not list"),
    ],
)
def test_from_dict_names_what_is_wrong(data, message):
    """Failed before: unknown keys and missing ones were a TypeError from the constructor, and
    wrong types either passed ("64" as a seq_len) or raised TypeError mid-comparison."""
    with pytest.raises(ValueError) as info:
        Workload.from_dict(data)
    assert message in str(info.value)


def test_from_dict_takes_whole_numbers_for_floats():
    """JSON writes 600.0 as 600 in many tools; a float field takes it."""
    w = Workload.from_dict({"model": "tiny", "timeout_s": 600, "target_ci_pct": 1})
    assert w.timeout_s == 600.0 and isinstance(w.timeout_s, float)
    assert isinstance(w.target_ci_pct, float)


def test_complete_from_dict_needs_every_field_but_later_ones():
    """A stored workload must say everything that made its numbers; fields added after schema 1
    (nproc) may be missing from old lines."""
    full = Workload(model="tiny").to_dict()
    assert Workload.from_dict(full, complete=True) == Workload(model="tiny")
    del full["nproc"]
    assert Workload.from_dict(full, complete=True).nproc is None
    del full["seq_len"]
    with pytest.raises(ValueError, match="lacks seq_len"):
        Workload.from_dict(full, complete=True)
