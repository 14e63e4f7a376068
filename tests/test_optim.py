"""Optimizations: their check() on a CPU, and teardown restoring the globals they patch."""

from __future__ import annotations

import pytest
import torch

from stagebench import optim, stages
from stagebench.optim import StageContext, Unavailable
from stagebench.optim.compile import decoder_layers

CPU = torch.device("cpu")


def test_every_seed_part_is_registered():
    table = optim.registry()
    assert set(stages.PART_ORDER) == set(table)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("sdpa", None),
        ("eager", None),
        ("sdpa+compile", None),
        ("sdpa-cudnn", "sdpa-cudnn: needs CUDA"),
        ("sdpa-flash", "sdpa-flash: needs CUDA"),
    ],
)
def test_check_on_cpu(spec, reason):
    assert optim.unavailable_reason(stages.resolve(spec), CPU) == reason


def test_sdpa_backend_choice_is_undone_at_teardown():
    """The backend restriction is global while the stage runs and gone after it."""
    from transformers import AutoModelForCausalLM

    from stagebench.models import load_config

    model = AutoModelForCausalLM.from_config(load_config("tiny"))
    stage = stages.resolve("sdpa-flash")
    ctx = StageContext(stage, CPU, torch.float32)
    before = torch.backends.cuda.math_sdp_enabled()
    with ctx.cleanup:
        optim.registry()["sdpa-flash"].apply(model, ctx)
        assert not torch.backends.cuda.math_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.math_sdp_enabled() == before


def test_per_layer_compile_needs_a_decoder_layer_list():
    with pytest.raises(Unavailable, match="no decoder layer list"):
        decoder_layers(torch.nn.Linear(2, 2))
