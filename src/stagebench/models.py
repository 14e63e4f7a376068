"""Model presets (configs only, never weights) and seeded construction on the target device.

Every stage of a preset starts from the same weights: the same seed, dtype and device give the same
random init, which is what makes step-0 losses comparable across stages.

Importing this module does not import torch or transformers: the asv suite validates its
configuration with it when asv imports the suite.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Qwen3 architectures as published; `tiny` keeps the family's shape (GQA, gated MLP, q/k norm)
# at a size a 2-core CPU trains in milliseconds.
PRESETS: dict[str, dict[str, Any]] = {
    "qwen3-8b": dict(
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    ),
    "qwen3-0.6b": dict(
        vocab_size=151936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    ),
    "tiny": dict(
        vocab_size=2048,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
    ),
}
WEIGHT_GLOBS = ("*.safetensors", "*.bin")
# A hub repository id: "name" or "namespace/name". Anything else with a separator is a path.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
ACCEPTED = f"a preset ({', '.join(PRESETS)}), a checkpoint directory or a hub id"


class ModelError(ValueError):
    """A model preset, path or id that cannot be turned into a config."""


def looks_like_path(model: str) -> bool:
    """A value meant as a local directory: hub ids never start with '.', '~' or '/', and have
    at most one '/' (namespace/name)."""
    return (
        model.startswith((".", "~", os.sep))
        or bool(os.altsep and os.altsep in model)
        or not HUB_ID.fullmatch(model)
        or Path(model).exists()
    )


def directory_problem(model: str) -> str | None:
    """Why a path-looking `model` is not a checkpoint directory; None when it is one."""
    path = Path(model)
    if not path.exists():
        return f"{model!r}: no such directory; give {ACCEPTED}"
    if not path.is_dir():
        return f"{model!r} is not a directory; give {ACCEPTED}"
    if not (path / "config.json").is_file():
        return f"{model!r} has no config.json; give {ACCEPTED}"
    return None


def check_name(model: str) -> None:
    """What can be known without transformers (the asv suite's import stays light): a preset,
    a checkpoint directory, or namespace/name (a hub id, resolved by the stage itself)."""
    if model in PRESETS:
        return
    if looks_like_path(model):
        problem = directory_problem(model)
        if problem:
            raise ModelError(problem)
        return
    if "/" not in model:
        raise ModelError(
            f"unknown model {model!r}: not a preset ({', '.join(PRESETS)}), "
            "not a checkpoint directory, not a namespace/name hub id"
        )


def max_positions(model: str) -> int | None:
    """A preset's longest sequence, known without transformers."""
    return PRESETS[model]["max_position_embeddings"] if model in PRESETS else None


def default_preset(device: str) -> str:
    """The seed's workload on a GPU; something a CPU can train otherwise."""
    return "qwen3-8b" if device.startswith("cuda") else "tiny"


def load_config(model: str):
    """A preset name, a local directory or a hub id -> a transformers config (use_cache off)."""
    from transformers import AutoConfig, Qwen3Config

    if model in PRESETS:
        config = Qwen3Config(**PRESETS[model])
    elif looks_like_path(model) and (problem := directory_problem(model)):
        # transformers would read '/missing/dir' as a malformed hub id and say so
        raise ModelError(problem)
    else:
        try:
            config = AutoConfig.from_pretrained(model)
        except Exception as exc:  # transformers raises several types for "not found"
            raise ModelError(
                f"unknown model {model!r}: not a preset ({', '.join(PRESETS)}) and not loadable "
                f"as a config ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            ) from exc
    config.use_cache = False  # training: no KV cache, as the seed
    return config


def has_weights(model: str) -> bool:
    path = Path(model)
    return path.is_dir() and any(any(path.glob(g)) for g in WEIGHT_GLOBS)


def build_model(
    model: str, *, device: torch.device, dtype: torch.dtype, seed: int, attn_implementation: str
) -> torch.nn.Module:
    """Seeded random init directly on `device` (no host copy); real weights for a checkpoint dir."""
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(model)
    if has_weights(model):
        # No device_map: that would make accelerate a dependency for one line of convenience.
        loaded = AutoModelForCausalLM.from_pretrained(
            model, config=config, dtype=dtype, attn_implementation=attn_implementation
        )
        return loaded.to(device)
    torch.manual_seed(seed)
    with torch.device(device):
        built = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )
    return built


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The repeated blocks: what per-layer compile compiles and FSDP2 shards one by one."""
    import torch

    from stagebench.optim import Unavailable

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise Unavailable(f"{type(model).__name__} has no decoder layer list")
    return layers


def parameter_count(config) -> int:
    """All parameters, embeddings included (what the seed's 6N counts), from the config alone."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in meta.parameters())
