"""Model presets and seeded construction: every stage must start from the same weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from stagebench import models
from stagebench.models import ModelError, build_model, load_config

CPU = torch.device("cpu")


def build(model: str, seed: int = 0, attn: str = "sdpa") -> torch.nn.Module:
    return build_model(model, device=CPU, dtype=torch.float32, seed=seed, attn_implementation=attn)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_config_is_for_training():
    """Training runs never use the KV cache; the preset keeps the Qwen3 shape."""
    config = load_config("tiny")
    assert config.use_cache is False
    assert config.model_type == "qwen3"
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)


def test_unknown_model_mentions_presets(tmp_path):
    """An unknown name says what it is not, listing the presets (a local path: no hub lookup)."""
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelError) as info:
        load_config(missing)
    message = str(info.value)
    assert missing in message
    for preset in models.PRESETS:
        assert preset in message


def test_same_seed_same_weights_other_seed_different():
    """Identical init across stages is what makes their step-0 losses comparable."""
    first = build("tiny", seed=3)
    again = build("tiny", seed=3)
    other = build("tiny", seed=4)
    assert same_weights(first, again)
    assert not same_weights(first, other)
    assert next(first.parameters()).dtype == torch.float32


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attn_implementation_honored(attn):
    """The attention the stage asked for is the one the model runs."""
    assert build("tiny", attn=attn).config._attn_implementation == attn


def test_checkpoint_dir_loads_its_weights(tmp_path):
    """A checkpoint directory means real weights: the seed must not replace them.

    Fails today: build_model passes device_map to from_pretrained, which needs `accelerate`,
    a package stagebench does not depend on (ValueError: ... requires `accelerate`).
    """
    saved = build("tiny", seed=11)
    saved.save_pretrained(tmp_path)
    loaded = build(str(tmp_path), seed=99, attn="eager")
    assert same_weights(loaded, saved)
    assert loaded.config._attn_implementation == "eager"
    assert loaded.config.use_cache is False


def test_config_only_dir_gets_seeded_init(tmp_path):
    """A directory with config.json but no weights is random-initialized from the seed."""
    load_config("tiny").save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["hidden_size"] == 128
    assert not models.has_weights(str(tmp_path))
    from_dir = build(str(tmp_path), seed=5)
    assert same_weights(from_dir, build("tiny", seed=5))
    assert not same_weights(from_dir, build(str(tmp_path), seed=6))


def test_default_preset():
    """The seed's model on a GPU, the tiny one on a CPU."""
    assert models.default_preset("cuda") == "qwen3-8b"
    assert models.default_preset("cuda:1") == "qwen3-8b"
    assert models.default_preset("cpu") == "tiny"


@pytest.mark.parametrize("name", ["Qwen/Qwen3-8B", "gpt2", "org/model.v2"])
def test_hub_ids_are_not_paths(name):
    """namespace/name (and a bare name) go to the hub, not to a "no such directory" error."""
    assert not models.looks_like_path(name)


@pytest.mark.parametrize("name", ["/abs/dir", "./rel", "../up", "~/home", "a/b/c", ".hidden"])
def test_paths_are_paths(name):
    assert models.looks_like_path(name)


def test_a_missing_directory_never_reaches_transformers(tmp_path):
    """Failed before: '/missing/dir' went to transformers as a hub id, whose message was about
    repository id characters."""
    missing = str(tmp_path / "a" / "b")
    with pytest.raises(ModelError, match="no such directory"):
        load_config(missing)


def test_check_name_without_transformers(tmp_path):
    """What the asv suite checks at import: a preset, a checkpoint directory, a hub id form."""
    load_config("tiny").save_pretrained(tmp_path)
    for name in ("tiny", str(tmp_path), "Qwen/Qwen3-8B"):
        models.check_name(name)
    with pytest.raises(ModelError, match="unknown model 'nonexistent'"):
        models.check_name("nonexistent")
    with pytest.raises(ModelError, match=r"has no config\.json"):
        models.check_name(str(tmp_path / ".."))


def test_importing_models_imports_no_torch():
    code = "import sys, stagebench.models; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
