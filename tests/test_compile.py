"""torch.compile: the seed's settings per stage, set for real on a CPU, and what dynamo did
(graph breaks, recompiles, frames run eagerly) counted into the Result and the report."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

from stagebench import stages
from stagebench.models import build_model
from stagebench.optim import StageContext
from stagebench.optim import compile as compile_opt
from stagebench.report import print_results, results_table, status_label
from stagebench.results import Result
from stagebench.runner import run_stage

CPU = torch.device("cpu")
SEED_COMPILE_STAGES = [s for s in stages.SEED_STAGES if stages.resolve(s).compiles]


@pytest.mark.parametrize("stage_id", SEED_COMPILE_STAGES)
def test_seed_compile_stages_get_the_seeds_settings(stage_id):
    """The seed: fullgraph=True for SDPA layers, fullgraph=False with capture_scalar_outputs for
    FlashAttention layers, cache_size_limit 256, max-autotune per layer; stagebench never
    suppresses errors. Decided from the stage alone: no CUDA needed."""
    settings = compile_opt.settings_for(stages.resolve(stage_id))
    flash = "_fa2_" in stage_id or "_fa3_" in stage_id
    assert settings.scope == "per-layer"
    assert settings.mode == "max-autotune"
    assert settings.fullgraph is not flash
    assert settings.capture_scalar_outputs is flash
    assert settings.cache_size_limit == 256
    assert settings.suppress_errors is False


def test_the_seeds_fa2_compile_row_is_not_fullgraph():
    """01_kernelize_fa2_compile failed on an H100 with FailOnRecompileLimitHit under
    fullgraph=True; the seed ran it without fullgraph and with a higher cache limit."""
    settings = compile_opt.settings_for(stages.resolve("01_kernelize_fa2_compile"))
    assert (settings.fullgraph, settings.cache_size_limit) == (False, 256)


@pytest.mark.parametrize(
    ("spec", "fullgraph", "mode"),
    [
        ("fa2+compile:fullgraph=on", True, "max-autotune"),
        ("sdpa+compile:fullgraph=off", False, "max-autotune"),
        ("sdpa+compile:mode=reduce-overhead", True, "reduce-overhead"),
        ("sdpa+compile-default", True, "default"),
        ("sdpa+compile-model", False, "default"),
        ("sdpa+compile-model:fullgraph=on:mode=max-autotune", True, "max-autotune"),
    ],
)
def test_spec_options_choose_the_settings(spec, fullgraph, mode):
    settings = compile_opt.settings_for(stages.resolve(spec))
    assert (settings.fullgraph, settings.mode) == (fullgraph, mode)


def test_sharded_max_autotune_drops_cuda_graphs():
    settings = compile_opt.settings_for(stages.resolve("sdpa+compile"), sharded=True)
    assert settings.mode == "max-autotune-no-cudagraphs"


def test_a_stage_without_compile_has_no_settings():
    with pytest.raises(ValueError, match="does not compile"):
        compile_opt.settings_for(stages.resolve("sdpa"))


def _tiny() -> torch.nn.Module:
    return build_model("tiny", device=CPU, dtype=torch.float32, seed=0, attn_implementation="sdpa")


@pytest.mark.parametrize(
    ("stage_id", "fullgraph", "capture_scalars"),
    [("01_kernelize_sdpa_compile", True, False), ("01_kernelize_fa2_compile", False, True)],
)
def test_apply_sets_the_settings_and_teardown_restores_them(
    monkeypatch, stage_id, fullgraph, capture_scalars
):
    """compile's apply on a tiny model (no FlashAttention needed for its own part): dynamo's
    config is the seed's while the stage runs, errors are not suppressed even when the
    environment asked for it, and every layer is compiled with the stage's fullgraph."""
    config = torch._dynamo.config
    before = (config.cache_size_limit, config.capture_scalar_outputs)
    calls: list[dict] = []
    real_compile = torch.nn.Module.compile

    def spy(self, *args, **kwargs):  # records the call, then compiles for real
        calls.append(kwargs)
        return real_compile(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", spy)
    model = _tiny()
    ctx = StageContext(stages.resolve(stage_id), CPU, torch.float32)
    with config.patch(suppress_errors=True):  # as TORCHDYNAMO_SUPPRESS_ERRORS=1 would
        with ctx.cleanup:
            compile_opt.apply(model, ctx)
            assert config.cache_size_limit == 256
            assert config.capture_scalar_outputs is capture_scalars
            assert config.suppress_errors is False
            assert f"fullgraph={fullgraph}" in ctx.notes["compile"]
        assert config.suppress_errors is True
    assert calls == [{"fullgraph": fullgraph, "mode": "max-autotune"}] * 2  # tiny: 2 layers
    assert (config.cache_size_limit, config.capture_scalar_outputs) == before


@pytest.fixture
def planted_graph_break(monkeypatch):
    """A FAKE: every decoder layer's MLP breaks the graph, as an unsupported op in a kernel
    library would. Only this test's process sees it."""
    from transformers.models.qwen3 import modeling_qwen3

    real_forward = modeling_qwen3.Qwen3MLP.forward

    def fake_forward_with_graph_break(self, x):
        torch._dynamo.graph_break()
        return real_forward(self, x)

    monkeypatch.setattr(modeling_qwen3.Qwen3MLP, "forward", fake_forward_with_graph_break)


def _result(stage: stages.Stage, metrics) -> Result:
    return Result(
        stage=stage.name, spec=stage.spec, status="ok", reason=None, model="tiny", workload={},
        metrics=metrics,
    )  # fmt: skip


def test_graph_breaks_are_counted_and_flagged(tiny_workload, planted_graph_break):
    """fullgraph off and a graph break in every layer: the stage is ok, its Result says how
    often and why it broke, and the report shows it as ok* with the reason."""
    stage = stages.resolve("sdpa+compile-default:fullgraph=off")
    metrics = run_stage(stage, tiny_workload)
    counts = metrics.compile
    assert counts.graph_breaks > 0
    assert counts.break_reasons
    assert "graph_break()" in next(iter(counts.break_reasons))
    assert sum(counts.break_reasons.values()) == counts.graph_breaks  # one reason here
    assert counts.graphs >= 2  # the layer is cut in pieces around the break
    assert counts.fell_back
    assert metrics.loss_last < metrics.loss_first  # still trains: the rest ran eagerly

    result = _result(stage, metrics)
    assert status_label(result) == "ok*"
    console = Console(record=True, width=250)
    print_results([result], console)
    text = console.export_text()
    assert "ok*" in text
    assert f"{stage.name}: ok*: {counts.graph_breaks} graph break(s)" in text
    assert "graph_break()" in text
    assert f"{counts.graphs}/{counts.graph_breaks}/{counts.recompiles}" in text


def test_fullgraph_on_turns_a_graph_break_into_a_failure(tiny_workload, planted_graph_break):
    """With fullgraph the same break is an error, never a silent fallback."""
    from torch._dynamo.exc import Unsupported

    with pytest.raises(Unsupported):
        run_stage(stages.resolve("sdpa+compile-default"), tiny_workload)


def test_frames_dynamo_gives_up_on_are_named():
    """The recompile limit reached with fullgraph off: the frame runs eagerly from then on,
    and observed() says which and why (recompiles are counted apart)."""

    class Scaled(torch.nn.Module):
        def __init__(self, factor: int) -> None:
            super().__init__()
            self.factor = factor  # an int attribute: guarded on, one compile per value

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.factor

    ctx = StageContext(stages.resolve("sdpa+compile-default:fullgraph=off"), CPU, torch.float32)
    with ctx.cleanup:
        compile_opt.reset_counters(ctx)
        layers = [Scaled(i) for i in range(4)]
        for layer in layers:
            layer.compile(fullgraph=False, backend="eager")
        with torch._dynamo.config.patch(cache_size_limit=2):
            for layer in layers:
                layer(torch.ones(2))
        counts = compile_opt.observed()
    assert counts.graphs == 2 and counts.recompiles == 1
    assert counts.eager_frames == 1
    ((frame, why),) = counts.eager_reasons.items()
    assert frame.startswith("forward (test_compile.py:")
    assert "recompile limit" in why
    assert counts.fell_back


def test_a_clean_stage_shows_plain_ok_and_its_counts():
    from test_report import make_metrics

    from stagebench.results import CompileMetrics

    stage = stages.resolve("sdpa+compile")
    clean = _result(stage, make_metrics(compile=CompileMetrics(1, 0, 0, 0)))
    plain = _result(stages.resolve("sdpa"), make_metrics())
    console = Console(record=True, width=250)
    console.print(results_table([clean, plain]))
    text = console.export_text()
    assert status_label(clean) == "ok" and "ok*" not in text
    assert "1/0/0" in text
