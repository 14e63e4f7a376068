"""Stages: plain data naming which optimizations are stacked on the model.

A stage is either one of the seed's 15 ids (``00_sdpa``, ``05_liger_cce_sdpa_compile`` ...) or a
spec string a user composes from parts joined by ``+`` (``sdpa+liger+cce+compile``). Both resolve
to the same frozen :class:`Stage`, so a seed id and its spec measure exactly the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

# Exactly one attention part per stage; the rest are optional add-ons.
ATTENTION_PARTS: dict[str, str] = {
    "eager": "transformers' eager attention (plain matmul + softmax)",
    "sdpa": "torch SDPA, seed priority on SM90: cuDNN attention first, then flash",
    "sdpa-cudnn": "torch SDPA restricted to the cuDNN attention backend",
    "sdpa-flash": "torch SDPA restricted to the flash backend",
    "fa2": "FlashAttention 2 (flash_attn package or hub kernel)",
    "fa3": "FlashAttention 3 (flash_attn_interface with backward, or hub kernel)",
}
ADDON_PARTS: dict[str, str] = {
    "kernelize": "kernels.kernelize(): hub/local kernels replace marked layers (RMSNorm)",
    "liger": "Liger Kernel instance patching (fused linear cross-entropy unless cce)",
    "cce": "cut-cross-entropy loss head on the base model's hidden states",
    "compile": "per-layer torch.compile(fullgraph=True, mode='max-autotune'), as the seed",
    "compile-default": "per-layer torch.compile(fullgraph=True), default mode",
    "compile-model": "whole-model torch.compile(), default mode",
}
COMPILE_PARTS = ("compile", "compile-default", "compile-model")
# The order optimizations are applied in: attention, kernel swaps, loss head, compile last.
PART_ORDER = (*ATTENTION_PARTS, "kernelize", "liger", "cce", *COMPILE_PARTS)

# The seed's table, row for row (see the seed README for what each ran).
SEED_STAGES: dict[str, str] = {
    "00_baseline": "eager",
    "00_fa2": "fa2",
    "00_fa3": "fa3",
    "00_sdpa": "sdpa",
    "01_kernelize_fa2_compile": "fa2+kernelize+compile",
    "01_kernelize_sdpa_compile": "sdpa+kernelize+compile",
    "02_liger_fa3": "fa3+liger",
    "02_liger_sdpa": "sdpa+liger",
    "03_liger_fa2_compile": "fa2+liger+compile",
    "03_liger_sdpa_compile": "sdpa+liger+compile",
    "04_liger_cce_fa3": "fa3+liger+cce",
    "04_liger_cce_sdpa": "sdpa+liger+cce",
    "05_kernelize_cce_sdpa_compile": "sdpa+kernelize+cce+compile",
    "05_liger_cce_fa2_compile": "fa2+liger+cce+compile",
    "05_liger_cce_sdpa_compile": "sdpa+liger+cce+compile",
}
# Step-0 losses of every stage are compared against this stage's.
REFERENCE_SPEC = "sdpa"
# Named matrices; `cpu` is what a machine without a GPU can really run.
MATRICES: dict[str, list[str]] = {
    "seed": list(SEED_STAGES),
    "cpu": ["00_baseline", "00_sdpa", "sdpa+compile-default", "sdpa+compile"],
    # Under FSDP2 (--nproc N): the seed's stages that ran ok unsharded on an H100.
    "fsdp": [
        "00_sdpa",
        "01_kernelize_sdpa_compile",
        "04_liger_cce_sdpa",
        "05_kernelize_cce_sdpa_compile",
    ],
}


def default_matrix(device: str) -> str:
    return "seed" if device == "cuda" else "cpu"


class StageError(ValueError):
    """A stage id or spec that names something stagebench does not know."""


@dataclass(frozen=True)
class Stage:
    """One benchmark configuration: a name and its ordered optimization parts."""

    name: str
    parts: tuple[str, ...]

    @property
    def attention(self) -> str:
        return self.parts[0]

    @property
    def spec(self) -> str:
        """Canonical spec string; equal for a seed id and the spec it stands for."""
        return "+".join(self.parts)

    @property
    def compiles(self) -> bool:
        return any(p in COMPILE_PARTS for p in self.parts)

    @property
    def is_reference(self) -> bool:
        return self.spec == REFERENCE_SPEC


def parse_spec(spec: str) -> tuple[str, ...]:
    """Split and validate a spec; returns its parts in application order."""
    raw = [p.strip() for p in spec.split("+")]
    valid = f"valid parts: {', '.join(PART_ORDER)}"
    if not spec.strip() or any(not p for p in raw):
        raise StageError(f"empty part in stage spec {spec!r}; join parts with '+'; {valid}")
    known = set(ATTENTION_PARTS) | set(ADDON_PARTS)
    for part in raw:
        if part not in known:
            raise StageError(f"unknown stage part {part!r} in {spec!r}; {valid}")
    repeated = sorted({p for p in raw if raw.count(p) > 1})
    if repeated:
        raise StageError(f"part {repeated[0]!r} is repeated in stage spec {spec!r}; {valid}")
    attention = [p for p in raw if p in ATTENTION_PARTS]
    if len(attention) != 1:
        raise StageError(
            f"stage spec {spec!r} needs exactly one attention part, one of: "
            f"{', '.join(ATTENTION_PARTS)}"
        )
    if sum(p in COMPILE_PARTS for p in raw) > 1:
        raise StageError(
            f"stage spec {spec!r} names more than one compile part; pick one of: "
            f"{', '.join(COMPILE_PARTS)}"
        )
    return tuple(sorted(raw, key=PART_ORDER.index))


def resolve(name: str) -> Stage:
    """A seed id or a spec string -> Stage. Raises StageError naming what was wrong."""
    name = name.strip()
    if name in SEED_STAGES:
        return Stage(name=name, parts=parse_spec(SEED_STAGES[name]))
    if "+" not in name and name not in ATTENTION_PARTS and name not in ADDON_PARTS:
        raise StageError(
            f"unknown stage {name!r}; valid seed stages: {', '.join(SEED_STAGES)}; "
            f"or a spec of parts joined by '+': {', '.join(PART_ORDER)}"
        )
    parts = parse_spec(name)
    return Stage(name="+".join(parts), parts=parts)


def seed_stages() -> list[Stage]:
    """The seed's matrix, in the seed's row order."""
    return [resolve(name) for name in SEED_STAGES]


def describe(part: str) -> str:
    return ATTENTION_PARTS.get(part) or ADDON_PARTS[part]
