"""FLOPs per token, device peaks and MFU: checked against a real FLOP count and the seed's table."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from stagebench import flops, models


def test_training_flops_match_flop_counter_on_tiny():
    """The analytic count must equal what torch really executes for forward + backward.

    Eager attention computes the full seq x seq score square before masking, so the comparable
    analytic count is causal=False. (The SDPA CPU kernel is not counted by FlopCounterMode at all,
    which is why eager is used here.)
    """
    from transformers import AutoModelForCausalLM

    config = models.load_config("tiny")
    batch, seq = 2, 64
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", dtype=torch.float32
    )
    x = torch.randint(0, config.vocab_size, (batch, seq))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=x, labels=x).loss.backward()
    counted = counter.get_total_flops()
    expected = flops.flops_per_token(config, seq, causal=False).training * batch * seq
    assert counted > 0
    assert counted == pytest.approx(expected, rel=0.02)


def test_causal_attention_is_the_mean_key_count_fraction():
    """A causal kernel attends to (seq+1)/2 keys on average; only the attention term changes."""
    config = models.load_config("tiny")
    seq = 1024
    causal = flops.flops_per_token(config, seq, causal=True)
    full = flops.flops_per_token(config, seq, causal=False)
    assert causal.attention == pytest.approx(full.attention * (seq + 1) / (2 * seq))
    assert (causal.qkvo, causal.mlp, causal.lm_head) == (full.qkvo, full.mlp, full.lm_head)
    assert causal.training == pytest.approx(3 * causal.forward)


def test_seed_00_sdpa_mfu():
    """The seed's 00_sdpa row, 343.9 TFLOPS against 989, is 34.8% MFU."""
    assert round(flops.mfu_pct(343.9, 989.0), 1) == 34.8
    assert round(flops.mfu_pct(343.9, flops.SEED_PEAK_TFLOPS), 1) == 34.8


def test_seed_formula_round_trips_through_tokens_per_s():
    """Qwen3-8B's parameter count and the seed's 6N + 12*L*H*d*s formula reproduce its TFLOPS."""
    config = models.load_config("qwen3-8b")
    n_params = models.parameter_count(config)
    assert n_params == 8_190_735_360  # Qwen3-8B's published count, untied embeddings
    per_token = flops.seed_flops_per_token(config, 1024, n_params)
    assert per_token == 6 * n_params + 12 * 36 * 32 * 128 * 1024
    tokens_per_s = 343.9e12 / per_token
    assert flops.tflops(tokens_per_s, per_token) == pytest.approx(343.9, rel=1e-12)


@pytest.mark.parametrize(
    ("device", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA B200", 2250.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.05),
    ],
)
def test_peak_for_known_devices(device, peak):
    """torch's device names map to the datasheet's dense bf16 peak, specific names first."""
    for dtype in ("bfloat16", "float16"):
        got = flops.peak_for(device, dtype)
        assert got.tflops == peak
        assert got.source.startswith("table:")


def test_peak_for_l40_is_not_l4():
    """'NVIDIA L40' must not be matched by the 'L4' entry (121 TFLOPS; the L40 is ~181).

    Fails today: substring matching makes 'L4' catch 'L40'.
    """
    got = flops.peak_for("NVIDIA L40", "bfloat16")
    assert got.tflops != 121.0
    assert got.tflops in (None, 181.05)


def test_unknown_device_has_no_peak_and_says_which():
    """No MFU is better than a wrong one: an unknown device gives None and names the device."""
    got = flops.peak_for("Intel(R) Data Center GPU Max 1550", "bfloat16")
    assert got.tflops is None
    assert "Intel(R) Data Center GPU Max 1550" in got.source
    assert "--peak-tflops" in got.source


def test_float32_has_no_peak_and_says_why():
    """The table holds bf16/fp16 peaks only; fp32 must not borrow them."""
    got = flops.peak_for("NVIDIA H100 80GB HBM3", "float32")
    assert got.tflops is None
    assert "float32" in got.source


def test_override_wins():
    """--peak-tflops beats the table, the dtype check and an unknown device alike."""
    assert flops.peak_for("NVIDIA H100 80GB HBM3", "bfloat16", 500.0).tflops == 500.0
    assert flops.peak_for("NVIDIA H100 80GB HBM3", "float32", 67.0).tflops == 67.0
    assert flops.peak_for("mystery", "bfloat16", 12.5).tflops == 12.5


def test_mfu_without_peak_is_none():
    """Without a peak there is no MFU, not a zero or a division error."""
    assert flops.mfu_pct(343.9, None) is None
    assert flops.mfu_pct(0.0, None) is None
