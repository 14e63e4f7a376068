"""The timed loop on `tiny`, for real, in this process."""

from __future__ import annotations

import math

import pytest

from stagebench import stages
from stagebench.runner import HostTimer, StageUnavailable, run_stage


def test_tiny_sdpa_run_gives_a_sane_measurement(tiny_workload):
    m = run_stage(stages.resolve("00_sdpa"), tiny_workload)
    assert math.isfinite(m.loss_first) and math.isfinite(m.loss_last)
    assert m.loss_last < m.loss_first, "AdamW on a fixed seed must lower the loss"
    # A random init predicts close to uniform: step-0 loss near ln(vocab).
    assert abs(m.loss_first - math.log(2048)) < 0.5
    assert m.grad_norm_first > 0
    assert tiny_workload.min_steps <= m.measured_steps <= tiny_workload.max_steps
    assert 0 < m.step_time_ms_min <= m.step_time_ms_median <= m.step_time_ms_max
    assert m.tokens_per_step == 2 * 64
    assert m.tokens_per_s == pytest.approx(m.tokens_per_step / (m.step_time_ms_median / 1000))
    assert m.tflops == pytest.approx(m.tokens_per_s * m.flops_per_token / 1e12)
    assert m.mfu_pct is None and "float32" in m.mfu_reason  # no fp32 peak table: no guess
    assert m.seed_mfu_pct is None  # 989 TFLOPS is an H100's, not this CPU's
    assert m.peak_reserved_gib is None
    assert m.attention_impl == "sdpa"
    assert m.first_step_s > 0 and m.model_init_s > 0


def test_same_seed_same_step0_loss_across_attention(tiny_workload):
    """Every stage of a preset starts from the same weights and data."""
    sdpa = run_stage(stages.resolve("sdpa"), tiny_workload)
    eager = run_stage(stages.resolve("eager"), tiny_workload)
    assert eager.attention_impl == "eager"
    assert eager.loss_first == pytest.approx(sdpa.loss_first, rel=1e-5)


def test_per_layer_compile_runs_for_real_on_cpu(tiny_workload):
    """The CPU path: per-layer torch.compile (fullgraph) through inductor's C++ backend; its
    counts are recorded, and a clean compile records zeros, not n/a."""
    plain = run_stage(stages.resolve("sdpa"), tiny_workload)
    compiled = run_stage(stages.resolve("sdpa+compile-default"), tiny_workload)
    assert compiled.notes["compile"] == (
        "per-layer, mode=default, fullgraph=True, cache_size_limit=256, "
        "capture_scalar_outputs=False, suppress_errors=False"
    )
    assert compiled.loss_first == pytest.approx(plain.loss_first, rel=1e-4)
    assert compiled.first_step_s > compiled.step_time_ms_median / 1000  # compile cost shows
    counts = compiled.compile
    assert counts.graphs >= 1  # one graph serves both decoder layers
    assert (counts.graph_breaks, counts.recompiles, counts.eager_frames) == (0, 0, 0)
    assert not counts.fell_back
    assert plain.compile is None  # a stage that compiles nothing has no counts at all


def test_cuda_only_stage_is_unavailable_not_a_crash(tiny_workload):
    with pytest.raises(StageUnavailable, match="sdpa-cudnn: needs CUDA"):
        run_stage(stages.resolve("sdpa-cudnn"), tiny_workload)


def test_host_timer_measures_elapsed_time():
    import time

    timer = HostTimer()
    timer.start()
    time.sleep(0.02)
    timer.stop()
    (elapsed,) = timer.times_ms(all_steps=True)
    assert 15 < elapsed < 500
