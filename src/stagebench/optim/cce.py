"""cut-cross-entropy as a model-agnostic loss head.

The PyPI release has no transformers patch, so this instance's forward is replaced (the class is
untouched): the base model's hidden states go straight into `linear_cross_entropy` with the LM
head's weight, and the full logits tensor is never materialized. Any causal LM with a base model
and a bias-free LM head qualifies. The head runs inside the model's own call, so hooks on it
still fire: FSDP2 gathers the root's parameters (embeddings, LM head) in its forward pre-hook.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from types import MethodType

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from stagebench.optim import Optimization, StageContext, Unavailable


def check(device: torch.device) -> str | None:
    if importlib.util.find_spec("cut_cross_entropy") is None:
        return "cut-cross-entropy not installed (pip install 'stagebench[gpu]')"
    return None  # CPU runs its torch_compile implementation


def implementation(device: torch.device) -> str:
    """The Triton CCE kernel on a GPU; cut-cross-entropy's torch.compile version elsewhere."""
    return "cce" if device.type == "cuda" else "torch_compile"


def loss_forward(impl: str, softcap: float | None):
    """A forward that returns only the loss, computed by CCE from the last hidden states."""
    from cut_cross_entropy import linear_cross_entropy

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, **kwargs):
        hidden = self.get_decoder()(input_ids=input_ids, **kwargs).last_hidden_state
        weight = self.get_output_embeddings().weight
        loss = linear_cross_entropy(hidden, weight, labels, shift=True, softcap=softcap, impl=impl)
        return CausalLMOutputWithPast(loss=loss)

    return forward


def apply(model: torch.nn.Module, ctx: StageContext) -> torch.nn.Module:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not hasattr(model, "get_decoder"):
        raise Unavailable(f"{type(model).__name__} has no base model + LM head for the CCE head")
    if getattr(head, "bias", None) is not None:
        raise Unavailable("the LM head has a bias, which linear_cross_entropy does not take")
    impl = implementation(ctx.device)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    model.forward = MethodType(loss_forward(impl, softcap), model)
    ctx.loss_head = f"cce ({impl})"
    ctx.notes["cce"] = f"cut-cross-entropy {metadata.version('cut-cross-entropy')}, impl={impl}"
    return model


OPTIMIZATIONS = {"cce": Optimization("cce", check, apply)}
