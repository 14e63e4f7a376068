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
