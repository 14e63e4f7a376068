"""cut-cross-entropy as a model-agnostic loss head.

The PyPI release has no transformers patch, so this instance's forward is replaced (the class is
untouched): the base model's hidden states go straight into `linear_cross_entropy` with the LM
head's weight, and the full logits tensor is never materialized. Any causal LM with a base model
and a bias-free LM head qualifies. The head runs inside the model's own call, so hooks on it
still fire: FSDP2 gathers the root's parameters (embeddings, LM head) in its forward pre-hook.

Accumulation (`cce:accum`, the seed's fp32): the seed called its fork's `cce_patch` with
`accum_e_fp32=True, accum_c_fp32=True`, so the CCE kernel's backward accumulated the gradients of
the hidden states (E) and of the classifier (C) in fp32 buffers. `linear_cross_entropy` takes the
same two keywords in cut-cross-entropy releases that have them; 25.1.1 has neither (its backward
accumulates both in the hidden states' dtype, bf16 on GPUs). They are passed where the installed
release takes them, and the notes say what was used either way. The torch_compile implementation
(CPU) has no chunked accumulation to set: autograd takes each gradient in one matmul.
"""

from __future__ import annotations

import importlib.util
import inspect
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


ACCUM_KEYWORDS = ("accum_e_fp32", "accum_c_fp32")


def accum_kwargs(accum: str, impl: str, dtype: torch.dtype) -> tuple[dict[str, bool], str]:
    """(keywords for linear_cross_entropy, what was used, for the notes) for `cce:accum`."""
    from cut_cross_entropy import linear_cross_entropy

    fp32 = accum == "fp32"
    if impl == "torch_compile":
        return {}, f"accum={accum}: torch_compile has no chunked accumulation (one matmul each)"
    takes = inspect.signature(linear_cross_entropy).parameters
    if all(k in takes for k in ACCUM_KEYWORDS):
        kwargs = dict.fromkeys(ACCUM_KEYWORDS, fp32)
        return kwargs, ", ".join(f"{k}={v}" for k, v in kwargs.items())
    version = metadata.version("cut-cross-entropy")
    if fp32:
        return {}, (
            f"accum=fp32 NOT applied: cut-cross-entropy {version}'s linear_cross_entropy takes no "
            f"accum_e_fp32/accum_c_fp32, so dE and dC accumulate in {dtype}"
        )
    return {}, f"dE and dC accumulate in {dtype} (cut-cross-entropy {version} takes no accum_*)"


def loss_forward(impl: str, softcap: float | None, accum: dict[str, bool] | None = None):
    """A forward that returns only the loss, computed by CCE from the last hidden states."""
    from cut_cross_entropy import linear_cross_entropy

    options = dict(accum or {})

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, **kwargs):
        hidden = self.get_decoder()(input_ids=input_ids, **kwargs).last_hidden_state
        weight = self.get_output_embeddings().weight
        loss = linear_cross_entropy(
            hidden, weight, labels, shift=True, softcap=softcap, impl=impl, **options
        )
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
    accum, used = accum_kwargs(ctx.stage.option("cce", "accum"), impl, ctx.dtype)
    model.forward = MethodType(loss_forward(impl, softcap, accum), model)
    ctx.loss_head = f"cce ({impl})"
    version = metadata.version("cut-cross-entropy")
    ctx.notes["cce"] = f"cut-cross-entropy {version}, impl={impl}; {used}"
    return model


OPTIMIZATIONS = {"cce": Optimization("cce", check, apply)}
