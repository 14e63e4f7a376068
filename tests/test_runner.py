"""The timed loop on `tiny`, for real, in this process."""

from __future__ import annotations

import dataclasses
import math

import pytest
from conftest import tiny

from stagebench import host_syncs, profile, results, runner, stages
from stagebench.runner import HostTimer, StageUnavailable, run_stage


@pytest.fixture(scope="module")
def tiny_sdpa():
    """One real run of `tiny`, read by several tests."""
    return run_stage(stages.resolve("00_sdpa"), tiny())


def test_tiny_sdpa_run_gives_a_sane_measurement(tiny_sdpa, tiny_workload):
    m = tiny_sdpa
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


def test_every_step_time_is_kept_warmup_marked(tiny_sdpa):
    m = tiny_sdpa
    assert len(m.samples.warmup_ms) == tiny().warmup_steps - 1  # step 0 is first_step_s
    assert len(m.samples.measured_ms) == m.measured_steps
    for t in m.samples.warmup_ms + m.samples.measured_ms:
        assert t > 0 and t == round(t, results.SAMPLE_DECIMALS)


def test_the_statistics_come_back_from_the_samples_alone(tiny_sdpa):
    m = tiny_sdpa
    again = results.summary_from_samples(m)
    stored = (m.measured_steps, m.step_time_ms_median, m.step_time_ms_iqr, m.step_time_ms_min,
              m.step_time_ms_max, m.step_time_ci95_pct)  # fmt: skip
    assert (again.n, again.median, again.iqr, again.minimum, again.maximum,
            again.ci95_half_width_pct) == stored  # fmt: skip


def test_a_cpu_run_carries_its_profile(tiny_sdpa):
    p = tiny_sdpa.profile
    assert p.source.startswith("cpu: aten op self time") and p.steps == 3
    assert "profile" not in tiny_sdpa.notes
    groups = [g.ms_per_step for g in p.groups.values()]
    assert sum(groups) == pytest.approx(p.busy_ms_per_step, abs=1e-4 * len(groups))
    assert sum(g.pct_of_busy for g in p.groups.values()) == pytest.approx(100, abs=0.1)
    assert p.host_gap_ms_per_step == pytest.approx(
        max(0.0, p.wall_ms_per_step - p.busy_ms_per_step), abs=2e-4
    )
    assert {"matmul", "attention", "loss", "optimizer", "activation"} <= set(p.groups)
    names = {(k.name, k.group) for k in p.kernels}
    assert ("aten::mm", "matmul") in names
    assert ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention") in names
    assert len(p.kernels) == min(profile.TOP_KERNELS, p.kernels_seen)
    assert set(p.memory_gib) == {"parameters", "gradients", "optimizer_state"}
    assert p.cost_s > 0


def _short(**changes):
    return dataclasses.replace(tiny(), min_steps=2, max_steps=2, **changes)


def test_profiling_off_leaves_no_profile_and_says_so():
    m = run_stage(stages.resolve("sdpa"), _short(profile_steps=0))
    assert m.profile is None and m.notes["profile"] == "off (profile_steps=0)"
    assert len(m.samples.measured_ms) == 2


def test_a_profiler_failure_never_fails_the_stage(monkeypatch):
    def fake_capture_that_fails(step, steps, device):
        raise profile.ProfilerFailed("the profiler failed: RuntimeError: planted")

    monkeypatch.setattr(profile, "capture", fake_capture_that_fails)
    m = run_stage(stages.resolve("sdpa"), _short())
    assert m.profile is None
    assert m.notes["profile"] == "failed: the profiler failed: RuntimeError: planted"
    assert m.step_time_ms_median > 0  # measured all the same


def test_host_syncs_are_said_on_a_profiled_cpu_run_and_absent_without_a_profile(tiny_sdpa):
    """A CPU step never waits for a device: the note says it was not counted, and why."""
    assert tiny_sdpa.notes["host_syncs"] == host_syncs.UNAVAILABLE_ON_CPU
    assert "host_syncs" not in run_stage(stages.resolve("sdpa"), _short(profile_steps=0)).notes


def test_the_host_sync_step_is_untimed_and_in_the_profiles_cost(monkeypatch):
    """The counting step runs after the profiled ones, never among the measured steps, and its
    time is part of the profile's cost_s (a FAKE observer that takes 0.5 s)."""
    import time

    seen = []

    steps = []
    real_step = runner._train_step
    monkeypatch.setattr(runner, "_train_step", lambda *a: steps.append(1) or real_step(*a))

    def fake_observe(step, device):
        before = len(steps)
        step()
        seen.append((device.type, len(steps) - before))  # one real training step
        time.sleep(0.5)
        return "planted note"

    monkeypatch.setattr(host_syncs, "observe", fake_observe)
    m = run_stage(stages.resolve("sdpa"), _short())
    assert seen == [("cpu", 1)] and m.notes["host_syncs"] == "planted note"
    assert len(m.samples.measured_ms) == 2 and max(m.samples.measured_ms) < 500
    assert m.profile.cost_s >= 0.5
