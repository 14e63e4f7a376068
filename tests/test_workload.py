"""Workload: the seed's defaults, validation that names the field, and the numerics key."""

from __future__ import annotations

import dataclasses
import json

import pytest

from stagebench.workload import Workload, defaults_for


def test_defaults_are_the_seeds():
    """Out of the box a run trains the seed's shapes: batch 2 x 1024 tokens, bf16 on CUDA."""
    w = Workload(model="qwen3-8b")
    assert (w.batch_size, w.seq_len) == (2, 1024)
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
