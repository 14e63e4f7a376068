"""Stage ids and specs: the seed's matrix, spec normalization, and errors that say what to do."""

from __future__ import annotations

import pytest

from stagebench import stages
from stagebench.stages import StageError, resolve, seed_stages

# The seed README's table, row for row: id -> parts in application order.
SEED_PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("00_baseline", ("eager",)),
    ("00_fa2", ("fa2",)),
    ("00_fa3", ("fa3",)),
    ("00_sdpa", ("sdpa",)),
    ("01_kernelize_fa2_compile", ("fa2", "kernelize", "compile")),
    ("01_kernelize_sdpa_compile", ("sdpa", "kernelize", "compile")),
    ("02_liger_fa3", ("fa3", "liger")),
    ("02_liger_sdpa", ("sdpa", "liger")),
    ("03_liger_fa2_compile", ("fa2", "liger", "compile")),
    ("03_liger_sdpa_compile", ("sdpa", "liger", "compile")),
    ("04_liger_cce_fa3", ("fa3", "liger", "cce")),
    ("04_liger_cce_sdpa", ("sdpa", "liger", "cce")),
    ("05_kernelize_cce_sdpa_compile", ("sdpa", "kernelize", "cce", "compile")),
    ("05_liger_cce_fa2_compile", ("fa2", "liger", "cce", "compile")),
    ("05_liger_cce_sdpa_compile", ("sdpa", "liger", "cce", "compile")),
]
ALL_PARTS = (
    "eager", "sdpa", "sdpa-cudnn", "sdpa-flash", "fa2", "fa3",
    "kernelize", "liger", "cce", "compile", "compile-default", "compile-model",
)  # fmt: skip
ATTENTION = ("eager", "sdpa", "sdpa-cudnn", "sdpa-flash", "fa2", "fa3")
COMPILES = ("compile", "compile-default", "compile-model")


@pytest.mark.parametrize(("stage_id", "parts"), SEED_PARTS)
def test_seed_id_resolves_to_exact_parts(stage_id, parts):
    """Each seed id must stack exactly the optimizations the seed's row ran, in apply order."""
    stage = resolve(stage_id)
    assert stage.name == stage_id
    assert stage.parts == parts
    assert stage.attention == parts[0]
    assert stage.compiles == ("compile" in parts)


def test_seed_stages_in_seed_order():
    """The default matrix reproduces the seed's table in its row order, all 15 rows."""
    got = [(s.name, s.parts) for s in seed_stages()]
    assert got == SEED_PARTS


def test_spec_in_any_order_normalizes_to_seed_spec():
    """A user's spec and the seed id it equals must measure (and be keyed as) the same thing."""
    user = resolve("compile+cce+sdpa+liger")
    seed = resolve("05_liger_cce_sdpa_compile")
    assert user.parts == seed.parts
    assert user.spec == seed.spec == "sdpa+liger+cce+compile"
    assert user.name == "sdpa+liger+cce+compile"


def test_spec_whitespace_is_ignored():
    """Spaces around '+' (easy to type in a shell quote) must not change the stage."""
    assert resolve(" sdpa + compile ").parts == ("sdpa", "compile")


def test_reference_stage_is_plain_sdpa():
    """Step-0 losses are compared against sdpa; 00_sdpa must be recognised as that reference."""
    assert resolve("00_sdpa").is_reference
    assert resolve("sdpa").is_reference
    assert not resolve("00_baseline").is_reference
    assert not resolve("sdpa+compile").is_reference


def _assert_lists(message: str, options: tuple[str, ...]) -> None:
    missing = [o for o in options if o not in message]
    assert not missing, f"message does not list valid options {missing}: {message}"


@pytest.mark.parametrize(
    ("text", "words", "options"),
    [
        # a typo in a seed id: which id, and the valid ones
        ("00_nope", ["'00_nope'"], tuple(stages.SEED_STAGES)),
        # a typo in a spec part: which part, and the valid parts
        ("sdpa+ligr", ["'ligr'"], ALL_PARTS),
        ("sdpa++cce", ["'sdpa++cce'", "empty"], ALL_PARTS),
        # a spec without attention cannot run: offer the attention parts
        ("liger+cce", ["'liger+cce'", "attention"], ATTENTION),
        # two attention kernels at once is ambiguous: offer the choices
        ("sdpa+fa2+liger", ["'sdpa+fa2+liger'", "exactly one attention part"], ATTENTION),
        # a repeated part is named itself, not only the spec
        ("sdpa+liger+liger", ["repeated", "'liger'"], ALL_PARTS),
        # two compile modes conflict: offer the compile parts
        ("sdpa+compile+compile-model", ["'sdpa+compile+compile-model'", "compile"], COMPILES),
    ],
)
def test_bad_stage_names_the_problem_and_lists_what_is_valid(text, words, options):
    with pytest.raises(StageError) as info:
        resolve(text)
    message = str(info.value)
    for word in words:
        assert word in message
    _assert_lists(message, options)


def test_stage_error_is_value_error():
    """Callers catching ValueError for bad input must also catch StageError."""
    assert issubclass(StageError, ValueError)
    with pytest.raises(ValueError):
        resolve("")


# Options: what the seed fixed, a user may choose; the defaults are the seed's.


@pytest.mark.parametrize(
    ("text", "name"),
    [
        # the brief's example, and options in any order or spacing
        ("sdpa+liger:accum=bf16+compile:fullgraph=off", "sdpa+liger:accum=bf16+compile:fullgraph=off"),  # noqa: E501
        (" compile : fullgraph = off + sdpa ", "sdpa+compile:fullgraph=off"),
        ("sdpa+compile:mode=reduce-overhead:fullgraph=off", "sdpa+compile:fullgraph=off:mode=reduce-overhead"),  # noqa: E501
        ("sdpa+cce:accum=bf16", "sdpa+cce:accum=bf16"),
        # the seed's values are left out: a default stage keeps its name and asv history
        ("sdpa+liger:accum=fp32+compile:fullgraph=auto", "sdpa+liger+compile"),
        ("sdpa+compile:fullgraph=on", "sdpa+compile"),  # what auto means for sdpa
        ("fa2+compile:fullgraph=off", "fa2+compile"),  # ... and for fa2
        ("fa2+compile:fullgraph=on", "fa2+compile:fullgraph=on"),
        ("sdpa+compile-model:fullgraph=off", "sdpa+compile-model"),
        # a per-layer mode is the part's name: one measurement, one name
        ("sdpa+compile:mode=default", "sdpa+compile-default"),
        ("sdpa+compile-default:mode=max-autotune", "sdpa+compile"),
        ("sdpa+compile-default:mode=reduce-overhead", "sdpa+compile:mode=reduce-overhead"),
        ("sdpa+compile-model:mode=max-autotune", "sdpa+compile-model:mode=max-autotune"),
    ],
)  # fmt: skip
def test_options_have_one_canonical_name(text, name):
    stage = resolve(text)
    assert stage.name == stage.spec == name
    assert resolve(name) == stage  # a stored name resolves to the same stage again


def test_option_values_in_effect():
    stage = resolve("sdpa+liger:accum=bf16+compile:fullgraph=off")
    assert stage.parts == ("sdpa", "liger", "compile")
    assert stage.options == (("liger", "accum", "bf16"), ("compile", "fullgraph", "off"))
    assert stage.option("liger", "accum") == "bf16"
    assert stage.option("compile", "mode") == "max-autotune"  # not given: the seed's
    assert not stages.compile_fullgraph(stage)


@pytest.mark.parametrize("stage_id", list(stages.SEED_STAGES))
def test_seed_ids_carry_the_seeds_settings(stage_id):
    """Every seed id stands for the seed's settings: no option differs from them, fp32
    accumulation in Liger's FLCE and in CCE, fullgraph per the seed's rule."""
    stage = resolve(stage_id)
    assert stage.options == ()
    assert stage.spec == stages.SEED_STAGES[stage_id]
    if "liger" in stage.parts:
        assert stage.option("liger", "accum") == "fp32"
    if "cce" in stage.parts:
        assert stage.option("cce", "accum") == "fp32"
    if stage.compiles:
        assert stages.compile_fullgraph(stage) == (stage.attention not in ("fa2", "fa3"))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("sdpa:fast=yes", ["part 'sdpa' takes no options", "liger:accum=fp32|bf16"]),
        ("sdpa+compile:speed=max", ["unknown option 'speed'", "fullgraph=auto|on|off", "mode="]),
        ("sdpa+compile:fullgraph=maybe", ["value 'maybe'", "compile:fullgraph", "auto|on|off"]),
        ("sdpa+compile:fullgraph", ["no value", "fullgraph=auto|on|off"]),
        ("sdpa+liger:accum=fp16", ["value 'fp16'", "liger:accum", "fp32|bf16"]),
        ("sdpa+cce:accum=", ["value ''", "cce:accum", "fp32|bf16"]),
        ("sdpa+compile:mode=fast", ["value 'fast'", "max-autotune|default"]),
        ("sdpa+compile:fullgraph=on:fullgraph=off", ["compile:fullgraph is repeated"]),
        ("sdpa+liger:accum=bf16+cce", ["liger:accum", "no effect", "cce:accum"]),
    ],
)
def test_bad_options_name_the_problem_and_what_is_accepted(text, words):
    with pytest.raises(StageError) as info:
        resolve(text)
    message = str(info.value)
    assert "\n" not in message
    assert repr(text) in message
    for word in words:
        assert word in message, message


def test_option_syntax_is_safe_in_shells_and_lists():
    """A spec travels through shells, '+'-joined parts and ','-separated lists (--subset,
    STAGEBENCH_MATRIX): options use none of the characters those treat specially."""
    spec = resolve("fa2+liger:accum=bf16+compile:fullgraph=on:mode=default").spec
    assert not set(spec) & set(" ,;|&$`'\"\\*?[]{}()<>!#~")
    assert all(line.count(":") for line in stages.option_lines())
