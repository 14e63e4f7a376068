"""Overlays: a venv over the base environment holding other releases of a few packages.

Offline with the FAKE stagebench-test-plant's wheels (tests/plant.py); one real overlay of an
older cut-cross-entropy from PyPI where it is reachable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import plant
import pytest
from test_releases import pypi_reachable

from stagebench import overlay
from stagebench.overlay import Base, Incompatible
from stagebench.releases import Source

# What the overlay's interpreter sees: the plant's version (if any) and where torch would come
# from, without importing torch (seconds).
_PROBE = """
import importlib.metadata as m, importlib.util, json, sys
from stagebench import env
try:
    version = m.version(sys.argv[1])
except m.PackageNotFoundError:
    version = None
print(json.dumps({"version": version, "torch": importlib.util.find_spec("torch").origin,
                  "packages": env.package_versions(), "overlay": env.overlay_info()}))
"""


def probe(python: str, package: str = plant.NAME) -> dict:
    out = subprocess.run([python, "-c", _PROBE, package], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_an_overlay_holds_its_release_over_the_base(plant_wheels, overlay_cache):
    built = overlay.build(
        [f"{plant.NAME}==1.0.0"], source=Source(find_links=plant_wheels), overlay_dir=overlay_cache
    )
    assert built.path.parent == overlay_cache
    assert built.changes() == [f"{plant.NAME} none -> 1.0.0"]
    seen = probe(built.python)
    assert seen["version"] == "1.0.0"
    base = overlay.base_info()
    assert any(seen["torch"].startswith(d) for d in base.site_dirs)  # torch from the base
    # A Result measured there names the overlay's packages (env is collected in the child).
    assert seen["packages"][plant.NAME] == "1.0.0"
    assert seen["packages"]["torch"] == base.packages["torch"]
    assert seen["overlay"]["changed"] == [f"{plant.NAME} none -> 1.0.0"]
    # The base never sees it.
    assert probe(sys.executable)["version"] is None
    again = overlay.build(
        [f"{plant.NAME}==1.0.0"], source=Source(find_links=plant_wheels), overlay_dir=overlay_cache
    )
    assert again.reused and again.path == built.path and again.changed == built.changed


def test_one_overlay_takes_several_requirements_and_a_bare_name_is_the_newest(
    tmp_path, overlay_cache
):
    """The canary lane's call: several packages at once, bare names at their newest release."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for version in ("1.0.0", "1.1.0"):
        plant.write_wheel(wheels, version)
    for version in ("2.0", "2.1"):
        plant.write_wheel(wheels, version, name="stagebench-test-other")
    built = overlay.build(
        [f"{plant.NAME}==1.0.0", "stagebench-test-other"],
        source=Source(find_links=wheels),
        overlay_dir=overlay_cache,
    )
    assert built.requirements == [f"{plant.NAME}==1.0.0", "stagebench-test-other==2.1"]
    assert sorted(built.changes()) == [
        "stagebench-test-other none -> 2.1",
        f"{plant.NAME} none -> 1.0.0",
    ]
    assert probe(built.python, "stagebench-test-other")["version"] == "2.1"


def test_a_module_that_does_not_import_is_incompatible(plant_wheels, overlay_cache):
    with pytest.raises(Incompatible) as caught:
        overlay.build(
            [f"{plant.NAME}=={plant.BROKEN}"],
            source=Source(find_links=plant_wheels),
            overlay_dir=overlay_cache,
        )
    assert caught.value.reason == (
        f"import stagebench_test_plant: ImportError: {plant.NAME} {plant.BROKEN} is planted "
        "broken: it needs a torch that is not there"
    )


def test_a_release_that_needs_another_torch_is_incompatible_with_pips_reason(
    tmp_path, overlay_cache
):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    plant.write_wheel(wheels, "0.9.0", requires=("torch<2",))
    with pytest.raises(Incompatible) as caught:
        overlay.build(
            [f"{plant.NAME}==0.9.0"], source=Source(find_links=wheels), overlay_dir=overlay_cache
        )
    reason = caught.value.reason
    assert reason.startswith("pip: ") and "torch" in reason and "\n" not in reason, reason
    # A failed install leaves nothing to reuse.
    assert not [p for p in overlay_cache.iterdir() if p.is_dir() and not (p / "bin").exists()]


def _base(**packages: str) -> Base:
    return Base("/py", "/prefix", "3.11", ["/site"], dict(packages))


def test_torchs_stack_is_pinned_to_the_base_unless_it_is_what_changes():
    base = _base(torch="2.13.0+cpu", triton="3.9.0", **{"nvidia-nccl-cu12": "2.27"}, rich="15")
    assert overlay.constraints(base, ["liger-kernel==0.7.0"]) == [
        "nvidia-nccl-cu12==2.27",
        "torch==2.13.0+cpu",
        "triton==3.9.0",
    ]
    assert overlay.constraints(base, ["torch==2.14.0"]) == []


def test_the_cache_key_follows_the_base_the_pins_and_the_source(tmp_path):
    key = overlay.cache_key(_base(torch="2.13"), ["a==1"], Source(), False)
    assert key == overlay.cache_key(_base(torch="2.13"), ["a==1"], Source(), False)
    assert key != overlay.cache_key(_base(torch="2.14"), ["a==1"], Source(), False)
    assert key != overlay.cache_key(_base(torch="2.13"), ["a==2"], Source(), False)
    assert key != overlay.cache_key(
        _base(torch="2.13"), ["a==1"], Source(find_links=tmp_path), False
    )


def test_the_cache_lives_under_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert overlay.cache_root() == tmp_path / "stagebench" / "overlays"
    assert overlay.cache_root(tmp_path / "mine") == tmp_path / "mine"


@pytest.mark.parametrize("text", ["torch>=2", "torch @ https://x/torch.whl", "torch==2.*", "!"])
def test_a_requirement_is_a_pin_or_a_bare_name(text):
    with pytest.raises(ValueError, match="requirement"):
        overlay.parse_requirement(text)


def test_pips_reason_is_one_line():
    conflict = """Collecting x==1.0
ERROR: Cannot install x==1.0 because these package versions have conflicting dependencies.

The conflict is caused by:
    x 1.0 depends on torch<2
    The user requested (constraint) torch==2.13.0+cpu

To fix this you could try to:
ERROR: ResolutionImpossible: for help visit https://pip.pypa.io
"""
    assert overlay.pip_reason(conflict) == (
        "pip: conflict: x 1.0 depends on torch<2; The user requested (constraint) torch==2.13.0+cpu"
    )
    missing = "ERROR: Could not find a version\nERROR: No matching distribution found for y==9\n"
    assert overlay.pip_reason(missing) == "pip: No matching distribution found for y==9"


@pytest.mark.network
def test_a_real_older_release_over_the_base(tmp_path):
    """cut-cross-entropy 24.12.3 (a 22 kB wheel) in an overlay: its interpreter imports that
    release, while torch (and the installed 25.1.1 for the base) stay the base's."""
    if not pypi_reachable():
        pytest.skip("PyPI (https://pypi.org) is not reachable")
    base = overlay.base_info()
    if "cut-cross-entropy" not in base.packages:
        pytest.skip("cut-cross-entropy is not installed in the base")
    built = overlay.build(["cut-cross-entropy==24.12.3"], overlay_dir=tmp_path)
    assert built.changes() == [f"cut-cross-entropy {base.packages['cut-cross-entropy']} -> 24.12.3"]
    seen = probe(built.python, "cut-cross-entropy")
    assert seen["version"] == "24.12.3"
    assert seen["packages"]["cut-cross-entropy"] == "24.12.3"
    assert any(seen["torch"].startswith(d) for d in base.site_dirs)
    assert Path(built.path / "lib").exists()


def _fake_interpreter(tmp_path: Path, site_dirs: list[str]) -> str:
    """FAKE interpreter: answers the site-packages query as Debian's python does in a venv,
    which also names dist-packages folders the venv never has."""
    fake = tmp_path / "fake-python"
    fake.write_text(f"#!/bin/sh\necho '{json.dumps(site_dirs)}'\n")
    fake.chmod(0o755)
    return str(fake)


def test_only_site_folders_that_exist_count_as_the_overlays_own(tmp_path):
    real = tmp_path / "venv" / "lib" / "python3.12" / "site-packages"
    real.mkdir(parents=True)
    debian = [str(real), str(tmp_path / "venv" / "local" / "lib" / "python3.12" / "dist-packages")]
    assert overlay._own_site_dirs(_fake_interpreter(tmp_path, debian)) == [str(real)]


def test_an_overlay_interpreter_without_a_site_folder_is_an_overlay_error(tmp_path):
    with pytest.raises(overlay.OverlayError, match=r"names site folders .*absent; none exists"):
        overlay._own_site_dirs(_fake_interpreter(tmp_path, [str(tmp_path / "absent")]))


@pytest.mark.parametrize(
    ("filenames", "expected"),
    [
        (
            ("{root}/abc/record.json.tmp", None),
            "the overlay cache {root} ({root}/abc/record.json.tmp)",
        ),
        (("/elsewhere/constraints-1.txt", None), "/elsewhere/constraints-1.txt: No space"),
        ((None, None), "building an overlay in {root}: No space"),
    ],
)
def test_a_write_error_names_the_file_and_blames_the_cache_only_for_its_own(
    tmp_path, filenames, expected
):
    root = tmp_path / "overlays"
    names = [n.format(root=root) if n else None for n in filenames]
    exc = OSError(28, "No space left on device", *names)
    assert overlay._write_error(root, exc).startswith(expected.format(root=root))
