"""FLOPs per token from a decoder config, device peaks, and MFU both ways.

Two MFU numbers are reported side by side:
- ``mfu``: matmul FLOPs actually required per token (q/k/v with GQA, o, gated MLP, LM head,
  attention scores and values over the causal half of the sequence), x3 for forward + backward.
  Embedding lookups, norms and activations are not matmuls and are not counted.
- ``seed_mfu``: the seed's formula, 6 x all parameters (embeddings included) + 12 x layers x heads
  x head_dim x seq_len, always against 989 TFLOPS, so a row lines up with the seed's table.
"""

from __future__ import annotations

from dataclasses import dataclass

SEED_PEAK_TFLOPS = 989.0  # H100 SXM dense bf16: what the seed divided by

# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' datasheets, in TFLOPS.
# Matched against torch.cuda.get_device_name(); the first matching entry wins, so the more
# specific names come first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200 NVL", 835.0),
    ("H200", 989.4),  # SXM
    ("GH200", 989.4),
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("B100", 1750.0),
    ("A100", 312.0),
    ("L40S", 362.05),
    ("L40", 181.05),
    ("L4", 121.0),
    ("A10G", 70.0),
)


@dataclass(frozen=True)
class Peak:
    """A device's peak in TFLOPS, or None with the reason no MFU can be given."""

    tflops: float | None
    source: str  # "table: H100", "--peak-tflops", or why there is none


def peak_for(device_name: str, dtype_name: str, override_tflops: float | None = None) -> Peak:
    if override_tflops is not None:
        return Peak(override_tflops, "override (--peak-tflops)")
    if dtype_name not in ("bfloat16", "float16"):
        return Peak(None, f"no peak table for {dtype_name}; pass --peak-tflops")
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return Peak(tflops, f"table: {key} dense bf16")
    return Peak(None, f"unknown device {device_name!r}; pass --peak-tflops")


@dataclass(frozen=True)
class FlopBreakdown:
    """Forward matmul FLOPs per token, by component (multiply-add = 2 FLOPs)."""

    qkvo: float
    mlp: float
    lm_head: float
    attention: float  # scores (QK^T) + values (AV)

    @property
    def forward(self) -> float:
        return self.qkvo + self.mlp + self.lm_head + self.attention

    @property
    def training(self) -> float:
        """Forward + backward: the backward pass costs twice the forward's matmuls."""
        return 3.0 * self.forward


def _dims(config) -> tuple[int, int, int, int, int, int, int]:
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return (
        hidden,
        heads,
        kv_heads,
        head_dim,
        config.intermediate_size,
        config.num_hidden_layers,
        config.vocab_size,
    )


def flops_per_token(config, seq_len: int, *, causal: bool = True) -> FlopBreakdown:
    """Matmul FLOPs per token for a gated-MLP decoder (Llama/Qwen/Mistral family).

    With ``causal=True`` a query attends on average to (seq_len + 1) / 2 keys, which is the work
    a causal kernel (SDPA, FlashAttention) does. ``causal=False`` counts the full seq_len x seq_len
    square, which is what eager attention computes before masking.
    """
    hidden, heads, kv_heads, head_dim, inter, layers, vocab = _dims(config)
    q_and_o = 2 * (2 * hidden * heads * head_dim)
    k_and_v = 2 * (2 * hidden * kv_heads * head_dim)
    keys = (seq_len + 1) / 2 if causal else seq_len
    return FlopBreakdown(
        qkvo=float(layers * (q_and_o + k_and_v)),
        mlp=float(layers * 3 * 2 * hidden * inter),
        lm_head=float(2 * hidden * vocab),
        attention=float(layers * 2 * (2 * heads * head_dim * keys)),
    )


def seed_flops_per_token(config, seq_len: int, n_params: int) -> float:
    """The seed's per-token training FLOPs: 6N + 12 * layers * heads * head_dim * seq_len."""
    _, heads, _, head_dim, _, layers, _ = _dims(config)
    return 6.0 * n_params + 12.0 * layers * heads * head_dim * seq_len


def tflops(tokens_per_s: float, flops_per_tok: float) -> float:
    return tokens_per_s * flops_per_tok / 1e12


def mfu_pct(achieved_tflops: float, peak_tflops: float | None) -> float | None:
    return None if peak_tflops is None else 100.0 * achieved_tflops / peak_tflops
