"""Stages: plain data naming which optimizations are stacked on the model, and how.

A stage is either one of the seed's 15 ids (``00_sdpa``, ``05_liger_cce_sdpa_compile`` ...) or a
spec string a user composes from parts joined by ``+`` (``sdpa+liger+cce+compile``). A part may
carry options after ``:``, each ``key=value``, several joined by ``:``
(``sdpa+liger:accum=bf16+compile:fullgraph=off:mode=default``). Every option defaults to what the
seed ran, so a seed id and its spec measure exactly the same thing, and the canonical spec names
only options that differ from the seed's.
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
    "compile": "per-layer torch.compile(mode='max-autotune'), as the seed",
    "compile-default": "per-layer torch.compile(), default mode",
    "compile-model": "whole-model torch.compile(), default mode",
}
COMPILE_PARTS = ("compile", "compile-default", "compile-model")
# FlashAttention layers: the seed compiled them without fullgraph (see compile_fullgraph).
FLASH_PARTS = ("fa2", "fa3")
# The order optimizations are applied in: attention, kernel swaps, loss head, compile last.
PART_ORDER = (*ATTENTION_PARTS, "kernelize", "liger", "cce", *COMPILE_PARTS)
OPTION_SEP, VALUE_SEP = ":", "="  # neither is special to a shell, '+' or a ','-separated list


@dataclass(frozen=True)
class Option:
    values: tuple[str, ...]
    default: str  # what the seed ran
    help: str


ACCUM = ("fp32", "bf16")
COMPILE_MODES = ("max-autotune", "default", "max-autotune-no-cudagraphs", "reduce-overhead")
# The mode each compile part stands for; a per-layer mode option is folded into the part name.
PART_MODE = {"compile": "max-autotune", "compile-default": "default", "compile-model": "default"}
OPTIONS: dict[str, dict[str, Option]] = {
    "liger": {
        "accum": Option(
            ACCUM,
            "fp32",
            "FLCE weight-gradient accumulation: fp32 (accum_dtype=torch.float32) or the "
            "weights' own dtype (bf16 on GPUs)",
        )
    },
    "cce": {
        "accum": Option(
            ACCUM,
            "fp32",
            "gradient accumulation: fp32 (accum_e_fp32, accum_c_fp32) or the inputs' dtype",
        )
    },
    **{
        part: {
            "fullgraph": Option(
                ("auto", "on", "off"),
                "auto",
                "auto is the seed's rule: off for fa2/fa3 layers and whole-model compile, else on",
            ),
            "mode": Option(
                COMPILE_MODES,
                PART_MODE[part],
                "torch.compile mode (per layer, compile:mode=default is named compile-default)",
            ),
        }
        for part in COMPILE_PARTS
    },
}

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


# (part, key, value) for every option that differs from the seed's, in canonical order.
Options = tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class Stage:
    """One benchmark configuration: a name, its ordered optimization parts and their options."""

    name: str
    parts: tuple[str, ...]
    options: Options = ()

    @property
    def attention(self) -> str:
        return self.parts[0]

    @property
    def spec(self) -> str:
        """Canonical spec string; equal for a seed id and the spec it stands for."""
        return "+".join(self._part_text(part) for part in self.parts)

    def _part_text(self, part: str) -> str:
        chosen = [f"{k}{VALUE_SEP}{v}" for p, k, v in self.options if p == part]
        return OPTION_SEP.join([part, *chosen])

    @property
    def compiles(self) -> bool:
        return self.compile_part is not None

    @property
    def compile_part(self) -> str | None:
        return next((p for p in self.parts if p in COMPILE_PARTS), None)

    @property
    def is_reference(self) -> bool:
        return self.spec == REFERENCE_SPEC

    def option(self, part: str, key: str) -> str:
        """The value in effect: the one given, else the seed's."""
        given = {(p, k): v for p, k, v in self.options}
        return given.get((part, key), OPTIONS[part][key].default)


def compile_fullgraph(stage: Stage) -> bool:
    """Whether the stage's compile part traces whole graphs (fullgraph=True).

    The seed's rule (`auto`): per-layer compile with fullgraph, except FlashAttention layers,
    which the seed compiled without it (transformers' flash path breaks the graph at batch 1);
    whole-model compile without it, as stagebench always ran it.
    """
    part = stage.compile_part
    if part is None:
        raise ValueError(f"stage {stage.name!r} has no compile part")
    value = stage.option(part, "fullgraph")
    if value == "auto":
        return _seed_fullgraph(stage.attention, part)
    return value == "on"


def _seed_fullgraph(attention: str, part: str) -> bool:
    return part != "compile-model" and attention not in FLASH_PARTS


def accepted_options(part: str) -> str:
    """`key=v1|v2, ...` for one part's options."""
    return ", ".join(
        f"{key}{VALUE_SEP}{'|'.join(o.values)}" for key, o in OPTIONS.get(part, {}).items()
    )


def _grouped() -> list[tuple[str, str]]:
    """(parts, their options' text), parts with the same options together: {a,b}."""
    groups: dict[tuple, list[str]] = {}
    for part, options in OPTIONS.items():
        same = tuple((key, o.values, o.help) for key, o in options.items())
        groups.setdefault(same, []).append(part)
    return [
        (parts[0] if len(parts) == 1 else "{" + ",".join(parts) + "}", accepted_options(parts[0]))
        for parts in groups.values()
    ]


def _all_options() -> str:
    return "; ".join(f"{parts}{OPTION_SEP}{text}" for parts, text in _grouped())


def _parse_options(text: str, spec: str) -> tuple[str, dict[str, str]]:
    """`compile:fullgraph=off:mode=default` -> ("compile", {"fullgraph": "off", ...})."""
    part, *raw = (piece.strip() for piece in text.split(OPTION_SEP))
    if not raw:
        return part, {}
    if part not in OPTIONS:
        raise StageError(
            f"part {part!r} takes no options (in {spec!r}); options exist for: {_all_options()}"
        )
    chosen: dict[str, str] = {}
    for item in raw:
        key, sep, value = (s.strip() for s in item.partition(VALUE_SEP))
        if key not in OPTIONS[part]:
            raise StageError(
                f"unknown option {key!r} for {part!r} in {spec!r}; accepted: "
                f"{accepted_options(part)}"
            )
        option = OPTIONS[part][key]
        if not sep or value not in option.values:
            shown = f"value {value!r}" if sep else "no value"
            raise StageError(
                f"{shown} for {part}{OPTION_SEP}{key} in {spec!r}; accepted: "
                f"{key}{VALUE_SEP}{'|'.join(option.values)}"
            )
        if key in chosen:
            raise StageError(f"option {part}{OPTION_SEP}{key} is repeated in {spec!r}")
        chosen[key] = value
    return part, chosen


def _canonical(parts: list[str], chosen: dict[str, dict[str, str]], spec: str) -> Options:
    """Fold options into canonical form: a per-layer mode into its part name, values equal to
    the seed's rule dropped, so one measurement has one name."""
    if "liger" in chosen and "accum" in chosen["liger"] and "cce" in parts:
        raise StageError(
            f"liger{OPTION_SEP}accum in {spec!r} has no effect: with cce, Liger's fused linear "
            "cross-entropy is not the loss head; set cce:accum instead"
        )
    attention = next(p for p in parts if p in ATTENTION_PARTS)
    compile_part = next((p for p in parts if p in COMPILE_PARTS), None)
    if compile_part is not None and compile_part != "compile-model":
        options = chosen.pop(compile_part, {})
        mode = options.pop("mode", PART_MODE[compile_part])
        # Per-layer: "compile" is max-autotune, "compile-default" default; others ride on compile.
        new_part = "compile-default" if mode == "default" else "compile"
        if mode != PART_MODE[new_part]:
            options["mode"] = mode
        parts[parts.index(compile_part)] = new_part
        chosen[new_part] = options
        compile_part = new_part
    if compile_part is not None:
        options = chosen.get(compile_part, {})
        seed = "on" if _seed_fullgraph(attention, compile_part) else "off"
        if options.get("fullgraph") == seed:  # what auto means here: the seed's spec
            del options["fullgraph"]
    kept = []
    for part in parts:
        for key, value in sorted(chosen.get(part, {}).items()):
            if value != OPTIONS[part][key].default:
                kept.append((part, key, value))
    return tuple(kept)


def parse_spec(spec: str) -> tuple[tuple[str, ...], Options]:
    """Split and validate a spec; returns its parts in application order and the options that
    differ from the seed's, in canonical form."""
    raw = [p.strip() for p in spec.split("+")]
    valid = f"valid parts: {', '.join(PART_ORDER)}"
    if not spec.strip() or any(not p for p in raw):
        raise StageError(f"empty part in stage spec {spec!r}; join parts with '+'; {valid}")
    known = set(ATTENTION_PARTS) | set(ADDON_PARTS)
    names: list[str] = []
    chosen: dict[str, dict[str, str]] = {}
    for text in raw:
        name = text.split(OPTION_SEP, 1)[0].strip()
        if name not in known:
            raise StageError(f"unknown stage part {name!r} in {spec!r}; {valid}")
        if name in names:
            raise StageError(f"part {name!r} is repeated in stage spec {spec!r}; {valid}")
        name, options = _parse_options(text, spec)
        names.append(name)
        if options:
            chosen[name] = options
    attention = [p for p in names if p in ATTENTION_PARTS]
    if len(attention) != 1:
        raise StageError(
            f"stage spec {spec!r} needs exactly one attention part, one of: "
            f"{', '.join(ATTENTION_PARTS)}"
        )
    if sum(p in COMPILE_PARTS for p in names) > 1:
        raise StageError(
            f"stage spec {spec!r} names more than one compile part; pick one of: "
            f"{', '.join(COMPILE_PARTS)}"
        )
    parts = sorted(names, key=PART_ORDER.index)
    options = _canonical(parts, chosen, spec)
    return tuple(parts), options


def resolve(name: str) -> Stage:
    """A seed id or a spec string -> Stage. Raises StageError naming what was wrong."""
    name = name.strip()
    if name in SEED_STAGES:
        return Stage(name, *parse_spec(SEED_STAGES[name]))
    base = name.split(OPTION_SEP, 1)[0].strip()
    if "+" not in name and base not in ATTENTION_PARTS and base not in ADDON_PARTS:
        raise StageError(
            f"unknown stage {name!r}; valid seed stages: {', '.join(SEED_STAGES)}; "
            f"or a spec of parts joined by '+': {', '.join(PART_ORDER)}"
        )
    stage = Stage("", *parse_spec(name))
    return Stage(stage.spec, stage.parts, stage.options)


def seed_stages() -> list[Stage]:
    """The seed's matrix, in the seed's row order."""
    return [resolve(name) for name in SEED_STAGES]


def describe(part: str) -> str:
    return ATTENTION_PARTS.get(part) or ADDON_PARTS[part]


def option_lines() -> list[str]:
    """One line per option with its values, default and meaning, for `stagebench list`."""
    lines = []
    for parts, _ in _grouped():
        names = parts.strip("{}").split(",")
        for key, o in OPTIONS[names[0]].items():
            defaults = {p: OPTIONS[p][key].default for p in names}
            default = (
                o.default
                if len(set(defaults.values())) == 1
                else ", ".join(f"{p}: {d}" for p, d in defaults.items())
            )
            lines.append(
                f"{parts}{OPTION_SEP}{key}{VALUE_SEP}{'|'.join(o.values)}  "
                f"(default {default}) {o.help}"
            )
    return lines
