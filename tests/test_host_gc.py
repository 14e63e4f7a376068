"""The collector during the measured steps: each mode inside, the collector restored after."""

import dataclasses
import gc

import pytest
import torch

from stagebench import host_gc, runner
from stagebench.asv_suite import benchmark_version
from stagebench.stages import resolve
from stagebench.workload import Workload


@pytest.fixture(autouse=True)
def _collector_as_python_runs_it():
    gc.enable()
    gc.unfreeze()
    yield
    gc.enable()
    gc.unfreeze()


def test_off_disables_the_collector_inside_only():
    with host_gc.controlled("off"):
        assert not gc.isenabled()
    assert gc.isenabled()


def test_off_leaves_a_collector_someone_else_disabled_disabled():
    gc.disable()
    with host_gc.controlled("off"):
        pass
    assert not gc.isenabled()


def test_freeze_moves_what_exists_to_the_permanent_generation_inside_only():
    kept = [[i] for i in range(1000)]  # objects the collector tracks
    with host_gc.controlled("freeze"):
        assert gc.get_freeze_count() >= len(kept)
        assert gc.isenabled()  # later objects are still collected
    assert gc.get_freeze_count() == 0


def test_a_collector_the_caller_froze_stays_frozen():
    kept = [[i] for i in range(1000)]
    gc.freeze()
    before = gc.get_freeze_count()
    with host_gc.controlled("freeze"):
        pass
    assert gc.get_freeze_count() >= before >= len(kept)


def test_default_touches_nothing():
    with host_gc.controlled("default"):
        assert gc.isenabled() and gc.get_freeze_count() == 0


@pytest.mark.parametrize("mode", ["off", "freeze"])
def test_the_collector_is_restored_when_a_step_raises(mode):
    with pytest.raises(RuntimeError), host_gc.controlled(mode):
        raise RuntimeError("a step failed")
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="host_gc='never'"), host_gc.controlled("never"):
        pass


def test_only_the_measured_steps_run_with_the_collector_off(monkeypatch, tiny_workload):
    """FAKE step (records the collector's state, trains nothing): step 0 and the warm-up run with
    the collector as Python runs it, the measured steps without it."""
    seen: list[bool] = []

    def fake_step(model, optimizer, batch, loss_fn):
        seen.append(gc.isenabled())
        return torch.tensor(1.0), torch.tensor(1.0)

    monkeypatch.setattr(runner, "_train_step", fake_step)
    workload = dataclasses.replace(
        tiny_workload, host_gc="off", warmup_steps=2, min_steps=3, max_steps=3, profile_steps=0
    )
    runner._timed_loop(None, None, [None] * 8, workload, torch.device("cpu"), None)
    assert seen == [True, True, False, False, False]
    assert gc.isenabled()


def test_another_collector_setting_is_another_series():
    """A history measured with the collector frozen is never joined to the default one."""
    stage = resolve("00_sdpa")
    default = benchmark_version(stage, Workload(model="tiny", device="cpu"))
    frozen = benchmark_version(stage, Workload(model="tiny", device="cpu", host_gc="freeze"))
    assert default != frozen and "gc-freeze" in frozen
    assert "gc-" not in default  # the default series keeps its version (no history split)
