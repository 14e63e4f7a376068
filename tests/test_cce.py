"""The CCE loss head on `tiny`, for real, with cut-cross-entropy's CPU (torch.compile) kernel."""

from __future__ import annotations

import pytest
import torch

from stagebench import stages
from stagebench.models import build_model
from stagebench.optim import StageContext, Unavailable, cce, training_loss
from stagebench.runner import run_stage

CPU = torch.device("cpu")
pytest.importorskip("cut_cross_entropy", reason="cut-cross-entropy is an optional [gpu] extra")


def _tiny():
    return build_model("tiny", device=CPU, dtype=torch.float32, seed=0, attn_implementation="sdpa")


def test_cce_head_matches_the_hf_head_in_loss_and_gradients():
    ids = torch.randint(0, 2048, (2, 32), generator=torch.Generator().manual_seed(0))
    reference, model = _tiny(), _tiny()
    ref_loss = training_loss(reference, ids, ids)
    ref_loss.backward()
    ctx = StageContext(stages.resolve("sdpa+cce"), CPU, torch.float32)
    cce.apply(model, ctx)
    loss = training_loss(model, ids, ids)
    loss.backward()
    assert ctx.loss_head == "cce (torch_compile)"
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    for name in ("lm_head.weight", "model.layers.0.mlp.down_proj.weight"):
        got = dict(model.named_parameters())[name].grad
        want = dict(reference.named_parameters())[name].grad
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_lm_head_with_bias_is_unavailable():
    model = _tiny()
    model.lm_head = torch.nn.Linear(128, 2048, bias=True)
    ctx = StageContext(stages.resolve("sdpa+cce"), CPU, torch.float32)
    with pytest.raises(Unavailable, match="bias"):
        cce.apply(model, ctx)


def test_run_stage_with_cce_on_tiny(tiny_workload):
    m = run_stage(stages.resolve("sdpa+cce"), tiny_workload)
    assert m.notes["loss_head"] == "cce (torch_compile)"
    assert m.loss_last < m.loss_first


def test_cpu_notes_say_the_accumulation_options_do_not_apply(tiny_workload):
    ctx = StageContext(stages.resolve("sdpa+cce"), CPU, torch.float32)
    cce.apply(_tiny(), ctx)
    assert ctx.notes["cce"].endswith(
        "impl=torch_compile; accum=fp32: torch_compile has no chunked accumulation (one matmul "
        "each)"
    )


def test_the_installed_release_gets_the_accumulation_it_takes():
    """The seed's fork took accum_e_fp32/accum_c_fp32; a release without them runs with its own
    accumulation, and the notes say fp32 was not applied rather than pretend."""
    import inspect

    from cut_cross_entropy import linear_cross_entropy

    kwargs, used = cce.accum_kwargs("fp32", "cce", torch.bfloat16)
    if "accum_e_fp32" in inspect.signature(linear_cross_entropy).parameters:
        assert kwargs == {"accum_e_fp32": True, "accum_c_fp32": True}
    else:  # 25.1.1, the locked release
        assert kwargs == {}
        assert used.startswith("accum=fp32 NOT applied: cut-cross-entropy ")
        assert used.endswith("so dE and dC accumulate in torch.bfloat16")


@pytest.mark.parametrize(("accum", "value"), [("fp32", True), ("bf16", False)])
def test_a_release_with_accumulation_options_gets_them(monkeypatch, accum, value):
    """A FAKE linear_cross_entropy with the newer signature: the keywords are passed."""
    import cut_cross_entropy

    def fake_linear_cross_entropy(e, c, targets, *, accum_e_fp32=False, accum_c_fp32=False):
        raise AssertionError("only its signature is read")

    monkeypatch.setattr(cut_cross_entropy, "linear_cross_entropy", fake_linear_cross_entropy)
    kwargs, used = cce.accum_kwargs(accum, "cce", torch.bfloat16)
    assert kwargs == {"accum_e_fp32": value, "accum_c_fp32": value}
    assert used == f"accum_e_fp32={value}, accum_c_fp32={value}"
