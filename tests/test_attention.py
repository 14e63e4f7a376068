"""Attention parts: what check() says without a GPU or a FlashAttention build."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from stagebench import hub
from stagebench.optim import attention

CPU = torch.device("cpu")


@pytest.mark.parametrize("part", ["fa2", "fa3", "sdpa-cudnn", "sdpa-flash"])
def test_gpu_attention_needs_cuda(part):
    assert attention.OPTIMIZATIONS[part].check(CPU) == "needs CUDA"


def test_fa2_without_package_or_hub_says_both(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    impl, why = attention._fa2_source()
    assert impl is None
    assert "flash_attn not installed" in why
    assert "kernels-community/flash-attn" in why and "HF_HUB_OFFLINE" in why


def test_untrusted_hub_org_is_refused(monkeypatch):
    monkeypatch.setenv("STAGEBENCH_TRUSTED_HUB_ORGS", "kernels-community")
    assert hub.untrusted_reason("kernels-community/flash-attn3") is None
    assert "not trusted" in hub.untrusted_reason("someone/flash-attn3")


class _ForwardOnly(torch.autograd.Function):
    """FAKE kernel: like a forward-only FlashAttention build, it fails in backward."""

    @staticmethod
    def forward(ctx, q):
        return q.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("This flash attention build does not support backward")


def test_forward_only_fa3_build_is_detected_up_front(monkeypatch):
    fake = types.ModuleType("flash_attn_interface")
    fake.__spec__ = types.SimpleNamespace(name="flash_attn_interface")
    fake.flash_attn_func = lambda q, k, v, causal: _ForwardOnly.apply(q)
    monkeypatch.setitem(sys.modules, "flash_attn_interface", fake)
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: object())
    attention._fa3_interface_reason.cache_clear()
    try:
        reason = attention._fa3_interface_reason("cpu")
    finally:
        attention._fa3_interface_reason.cache_clear()
    assert reason is not None
    assert "does not support backward" in reason


def test_fa3_attention_transposes_to_flash_layout(monkeypatch):
    """The registered function hands FA (b, s, h, d) and returns transformers' layout back."""
    seen = {}

    def fake_flash(q, k, v, softmax_scale, causal):  # FAKE: records what it was given
        seen.update(shape=q.shape, kv=k.shape, scale=softmax_scale, causal=causal)
        return q, None

    fake = types.ModuleType("flash_attn_interface")
    fake.flash_attn_func = fake_flash
    monkeypatch.setitem(sys.modules, "flash_attn_interface", fake)
    q = torch.randn(2, 8, 16, 4)  # (batch, heads, seq, head_dim)
    kv = torch.randn(2, 2, 16, 4)  # GQA: fewer kv heads, passed through unexpanded
    out, weights = attention.fa3_attention(None, q, kv, kv, None, scaling=0.5)
    assert seen == {"shape": (2, 16, 8, 4), "kv": (2, 16, 2, 4), "scale": 0.5, "causal": True}
    assert out.shape == (2, 16, 8, 4) and weights is None
