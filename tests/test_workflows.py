"""Policy checks for the GitHub Actions workflows.

Workflows only run on GitHub, so these tests hold their text to the rules that keep the GPU
runner safe and the pipeline wired to real nox sessions and commands; the shell of the steps
that handle the container's output is run here against stand-ins for the container.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import posixpath
import re
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
NO_LINKS = ROOT / ".github" / "scripts" / "no-links.sh"
GPU_LABELS = {"self-hosted", "linux", "x64", "gpu", "h100"}
GPU_GROUP = "h100-gpu"
MAIN_ONLY = "github.ref == 'refs/heads/main'"
STAGEBENCH_COMMANDS = {"env", "list", "run", "matrix", "regressions"}
# The phases of `python3 -m stagebench.nightly` (src/stagebench/nightly.py) and the options
# each takes, restated here so the workflows are checked without importing the module.
NIGHTLY_PHASES = {
    "restore": {"--remote", "--branch", "--results"},
    "run": {"--report"},
    "store": {"--remote", "--branch", "--results", "--message"},
}
TOKEN_MARKERS = ("secrets.", "github.token", "GITHUB_TOKEN", "GH_TOKEN")
PINNED_USES = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
VERSION_COMMENT = re.compile(r"#\s*(v\d+\.\d+\.\d+)\s*$")
NOX_CALL = re.compile(r"\bnox\s+(?:-s|--session|--sessions)\s+([\w-]+)")
STAGEBENCH_CALL = re.compile(r"(?<![\w./-])stagebench\s+([a-z][\w-]*)")
NIGHTLY_CALL = re.compile(r"-m\s+stagebench\.nightly\s+([a-z][\w-]*)")
# Host-side invocations of the project's own scripts.
SCRIPT_PATH = re.compile(r"(?<![\w/.-])((?:\.\./|\./)*(?:docker|scripts|\.github/scripts)/[\w.-]+)")
CONTAINER_CALL = re.compile(r"gpu-run\.sh|image\.sh ensure|\bdocker\s+(?:run|build)\b")


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return data


WORKFLOW_FILES = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
ALL = {path.name: _load(path) for path in WORKFLOW_FILES}


def triggers(wf: dict) -> dict:
    # YAML 1.1 reads the bare key `on` as boolean True.
    on = wf.get("on", wf.get(True))
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    assert isinstance(on, dict), "workflow has no triggers"
    return on


def labels(job: dict) -> set[str]:
    runs_on = job.get("runs-on")
    if isinstance(runs_on, dict):
        runs_on = runs_on.get("labels", [])
    if isinstance(runs_on, str):
        runs_on = [runs_on]
    return set(runs_on or [])


def is_gpu_job(job: dict) -> bool:
    return "self-hosted" in labels(job)


def called_workflow(job: dict) -> str | None:
    uses = job.get("uses", "")
    if uses.startswith("./.github/workflows/"):
        return Path(uses).name
    return None


def reaches_gpu(job: dict) -> bool:
    """The job runs on the GPU runner itself or through a local reusable workflow."""
    callee = called_workflow(job)
    if callee is not None:
        return any(is_gpu_job(j) for j in ALL[callee]["jobs"].values())
    return is_gpu_job(job)


def steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def runs(job: dict) -> Iterator[str]:
    for step in steps(job):
        if "run" in step:
            yield step["run"]


def all_jobs() -> Iterator[tuple[str, str, dict]]:
    for name, wf in ALL.items():
        for job_id, job in wf["jobs"].items():
            yield name, job_id, job


def all_runs() -> Iterator[tuple[str, str, str]]:
    for name, job_id, job in all_jobs():
        for script in runs(job):
            yield name, job_id, script


def joined(script: str) -> str:
    return script.replace("\\\n", " ")


def runs_container(step: dict) -> bool:
    """The step runs the image: the benchmark container, or a build running the Dockerfile."""
    return CONTAINER_CALL.search(step.get("run", "")) is not None


def uses_action(job: dict, action: str) -> bool:
    return any(step.get("uses", "").startswith(f"{action}@") for step in steps(job))


def step_env(wf: dict, job: dict, step: dict) -> dict[str, str]:
    return {**wf.get("env", {}), **job.get("env", {}), **step.get("env", {})}


def expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: str(env.get(m[1], m[0])), text)


def nightly_calls(script: str) -> list[tuple[str, list[str]]]:
    """Each `-m stagebench.nightly PHASE ARGS` with its arguments (up to `||`, `;` ...)."""
    calls = []
    for line in joined(script).splitlines():
        found = NIGHTLY_CALL.search(line)
        if not found:
            continue
        args = []
        for token in shlex.split(line[found.end() :]):
            if token in ("||", "&&", "|", ";"):
                break
            args.append(token)
        calls.append((found.group(1), args))
    return calls


def options(args: list[str]) -> dict[str, str]:
    assert len(args) % 2 == 0, f"expected --option value pairs: {args}"
    return dict(zip(args[::2], args[1::2], strict=True))


def needed_permissions(job: dict) -> dict[str, str]:
    """The least the job's own steps need; callers need what the called jobs declare."""
    callee = called_workflow(job)
    if callee is not None:
        merged: dict[str, str] = {}
        for called in ALL[callee]["jobs"].values():
            for scope, level in called.get("permissions", {}).items():
                if merged.get(scope) != "write":
                    merged[scope] = level
        return merged
    scripts = "\n".join(runs(job))
    needed: dict[str, str] = {}
    if uses_action(job, "actions/checkout"):
        needed["contents"] = "read"
    if re.search(r"\bgit\b[^\n]*\bpush\b", scripts) or any(
        phase == "store" for phase, _ in nightly_calls(scripts)
    ):
        needed["contents"] = "write"
    if "image.sh pull" in scripts:
        needed["packages"] = "read"
    if "image.sh ensure" in scripts:
        needed["packages"] = "write"
    if re.search(r"\bgh issue\b", scripts):
        needed["issues"] = "write"
    if uses_action(job, "actions/deploy-pages"):
        needed["pages"] = "write"
        needed["id-token"] = "write"
    return needed


def test_expected_workflows_exist():
    for name in ("ci.yml", "nightly.yml", "bisect.yml", "gpu-image.yml", "pr-bench.yml"):
        assert name in ALL, f".github/workflows/{name} is missing"


@pytest.mark.parametrize("name", sorted(ALL))
def test_top_level_permissions_empty(name):
    assert ALL[name].get("permissions", "unset") == {}, "set `permissions: {}` at the top"


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_job_has_exact_minimal_permissions(name):
    for job_id, job in ALL[name]["jobs"].items():
        perms = job.get("permissions")
        assert isinstance(perms, dict), f"{name}:{job_id} must list its permissions"
        assert perms == needed_permissions(job), f"{name}:{job_id} permissions are not minimal"


def test_third_party_actions_pinned_to_commit_with_version_comment():
    seen: dict[str, str] = {}
    for path in WORKFLOW_FILES:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            match = re.match(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", line)
            if not match or match.group(1).startswith("./"):
                continue
            where = f"{path.name}:{lineno}"
            ref, rest = match.groups()
            assert PINNED_USES.match(ref), f"{where}: {ref} is not pinned to a 40-hex commit"
            comment = VERSION_COMMENT.search(rest)
            assert comment, f"{where}: add a `# vX.Y.Z` comment naming the pinned release"
            action = ref.split("@")[0]
            pin = f"{ref} {comment.group(1)}"
            assert seen.setdefault(action, pin) == pin, f"{where}: {action} pinned differently"
    assert seen, "no third-party action found: the scan is broken"


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_privileged_pull_request_triggers(name):
    on = triggers(ALL[name])
    assert "pull_request_target" not in on
    assert "workflow_run" not in on
    assert "pull_request_target" not in (WORKFLOWS / name).read_text(encoding="utf-8")


def test_gpu_jobs_run_on_h100_runner_and_share_one_lock():
    gpu_jobs = []
    for name, wf in ALL.items():
        top = wf.get("concurrency")
        for job_id, job in wf["jobs"].items():
            if any(runs_container(step) for step in steps(job)):
                assert is_gpu_job(job), f"{name}:{job_id} runs the GPU container off the runner"
            if not is_gpu_job(job):
                continue
            gpu_jobs.append(f"{name}:{job_id}")
            assert labels(job) == GPU_LABELS, f"{name}:{job_id} runs-on {sorted(labels(job))}"
            lock = job.get("concurrency", top)
            assert isinstance(lock, dict), f"{name}:{job_id} needs concurrency group {GPU_GROUP}"
            assert lock.get("group") == GPU_GROUP, f"{name}:{job_id} is outside {GPU_GROUP}"
            assert lock.get("cancel-in-progress") is False, f"{name}:{job_id} may be cancelled"
        if isinstance(top, dict) and top.get("group") == GPU_GROUP:
            # A job waiting on the group its own run holds would never start.
            for job in wf["jobs"].values():
                assert job.get("concurrency", {}).get("group") != GPU_GROUP
    for name in ("nightly.yml", "bisect.yml", "pr-bench.yml"):
        assert any(j.startswith(f"{name}:") for j in gpu_jobs), f"{name} has no GPU job"


@pytest.mark.parametrize("name", sorted(ALL))
def test_gpu_runner_never_runs_on_pull_request_events(name):
    """No event a pull request (or a fork) can cause reaches the self-hosted runner: GPU work
    is scheduled or started by a maintainer."""
    wf = ALL[name]
    on = triggers(wf)
    if not any(reaches_gpu(job) for job in wf["jobs"].values()):
        return
    allowed = {"schedule", "workflow_dispatch", "workflow_call"}
    assert set(on) <= allowed, f"{name}: GPU jobs triggered by {sorted(set(on) - allowed)}"
    if "workflow_call" in on:
        assert set(on) == {"workflow_call"}, f"{name}: reusable GPU workflow with other triggers"
        callers = [
            (caller, job_id)
            for caller, cwf in ALL.items()
            for job_id, job in cwf["jobs"].items()
            if called_workflow(job) == name
        ]
        assert callers, f"{name} is never called"
        # Each caller job reaches the GPU and so is checked by this same test.


def test_workflow_triggers():
    assert set(triggers(ALL["nightly.yml"])) == {"schedule", "workflow_dispatch"}
    assert set(triggers(ALL["bisect.yml"])) == {"workflow_dispatch"}
    inputs = triggers(ALL["bisect.yml"])["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"good", "bad", "benchmark"}
    assert set(triggers(ALL["pr-bench.yml"])) == {"workflow_dispatch"}
    inputs = triggers(ALL["pr-bench.yml"])["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"pr"}
    assert inputs["pr"]["required"] is True
    check = next(s for s in steps(PR["jobs"]["bench"]) if s.get("name") == "Check the input")
    assert PR["jobs"]["bench"]["env"]["PR"] == "${{ inputs.pr }}"
    assert "$PR =~ ^[1-9][0-9]{0,9}$" in check["run"], "the number is checked before use"


def test_no_secrets_reach_the_benchmark_container():
    for name, wf in ALL.items():
        text = (WORKFLOWS / name).read_text(encoding="utf-8")
        assert "secrets." not in text, f"{name} uses repository secrets"
        for job_id, job in wf["jobs"].items():
            assert "secrets" not in job, f"{name}:{job_id} passes secrets to a workflow"
            container_steps = [step for step in steps(job) if "gpu-run.sh" in step.get("run", "")]
            if not container_steps:
                continue
            where = f"{name}:{job_id}"
            shared = json.dumps([wf.get("env", {}), job.get("env", {})])
            assert not any(m in shared for m in TOKEN_MARKERS), f"{where}: token in shared env"
            for step in container_steps:
                seen = json.dumps(step)
                assert not any(m in seen for m in TOKEN_MARKERS), f"{where}: token in {step}"
            for step in steps(job):
                if step.get("uses", "").startswith("actions/checkout@"):
                    persist = step.get("with", {}).get("persist-credentials")
                    assert persist in (False, "false"), f"{where}: checkout keeps its token"


def test_token_only_in_registry_and_issue_steps():
    for name, job_id, job in all_jobs():
        for step in steps(job):
            if "github.token" not in json.dumps(step.get("env", {})):
                continue
            script = step.get("run", "")
            publishes = "image.sh" in script or re.search(r"\bgh (issue|label)\b", script)
            assert publishes, f"{name}:{job_id}: token given to {step.get('name', step)}"
            assert "gpu-run.sh" not in script


def _docker_run_tokens() -> list[str]:
    script = (ROOT / "docker" / "gpu-run.sh").read_text(encoding="utf-8")
    lines = [line for line in joined(script).splitlines() if "docker run" in line]
    assert len(lines) == 1, "docker/gpu-run.sh should hold exactly one docker run"
    return shlex.split(lines[0])


def test_container_gets_only_explicit_environment_and_expected_mounts():
    tokens = _docker_run_tokens()
    env: dict[str, str] = {}
    volumes: dict[str, str] = {}
    for flag in ("--env-file", "--privileged", "--network=host", "--pid=host"):
        assert flag not in tokens, f"{flag} widens the container"
    for flag, value in itertools.pairwise(tokens):
        if flag in ("--env", "-e"):
            key, sep, val = value.partition("=")
            assert sep, f"--env {value} would copy the host's value into the container"
            env[key] = val
        if flag in ("--volume", "-v"):
            _source, target, *mode = value.split(":")
            volumes[target] = ":".join(mode)
    assert not any(m in json.dumps(env) for m in TOKEN_MARKERS)
    assert env.get("STAGEBENCH_NOX_REUSE_SYSTEM") == "1"
    assert env.get("PYTHONPATH") == "/workspace/src", "run the checkout, not the baked copy"
    assert env.get("STAGEBENCH_TRUSTED_HUB_ORGS") == "kernels-community"
    assert tokens[tokens.index("--gpus") + 1] == "all"
    expected = {"/workspace", "/workspace/.git", "/workspace/.asv/results"}
    assert expected | {"/cache/inductor", "/cache/huggingface"} <= set(volumes)
    # A hook or config written into .git would run on the host at the next checkout.
    assert volumes["/workspace/.git"] == "ro"
    assert all(mode == "" for target, mode in volumes.items() if target != "/workspace/.git")


def test_git_directory_is_mounted_read_only_over_the_workspace():
    """Docker applies mounts in order: the read-only .git must come after the checkout's."""
    volumes = [v for flag, v in itertools.pairwise(_docker_run_tokens()) if flag == "--volume"]
    assert "$workspace/.git:/workspace/.git:ro" in volumes
    assert volumes.index("$workspace:/workspace") < volumes.index(
        "$workspace/.git:/workspace/.git:ro"
    )


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_expressions_inside_run_scripts(name):
    # Inputs and event data reach shell only through `env:`, never as script text.
    for job_id, job in ALL[name]["jobs"].items():
        for script in runs(job):
            assert "${{" not in script, f"{name}:{job_id} interpolates into a run script"


def test_bisect_inputs_flow_through_env():
    job = ALL["bisect.yml"]["jobs"]["bisect"]
    env = job.get("env", {})
    scripts = "\n".join(runs(job))
    for key in ("good", "bad", "benchmark"):
        var = key.upper()
        assert env.get(var) == f"${{{{ inputs.{key} }}}}", f"input {key} is not passed via env"
        assert f'"${var}"' in scripts, f"${var} is never used"


def _nox_sessions() -> set[str]:
    noxfile = ROOT / "noxfile.py"
    assert noxfile.is_file(), "noxfile.py is missing"
    tree = ast.parse(noxfile.read_text(encoding="utf-8"))
    sessions: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for deco in node.decorator_list:
            target = deco.func if isinstance(deco, ast.Call) else deco
            named = (isinstance(target, ast.Attribute) and target.attr == "session") or (
                isinstance(target, ast.Name) and target.id == "session"
            )
            if not named:
                continue
            name = node.name
            if isinstance(deco, ast.Call):
                for kw in deco.keywords:
                    if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                        name = kw.value.value
            sessions.add(name)
    return sessions


def test_called_nox_sessions_exist():
    called = {m for _, _, script in all_runs() for m in NOX_CALL.findall(script)}
    assert {"lint", "tests", "bisect"} <= called
    missing = called - _nox_sessions()
    assert not missing, f"workflows call nox sessions that noxfile.py lacks: {sorted(missing)}"


def test_bisect_is_called_with_good_bad_benchmark():
    calls = [script for _, _, script in all_runs() if re.search(r"nox\s+-s\s+bisect\b", script)]
    assert calls
    for script in calls:
        tail = joined(script).split("nox -s bisect", 1)[1]
        args = shlex.split(tail.split("2>&1")[0])
        assert args[0] == "--" and len(args) == 4, f"bisect posargs are {args[1:]}"


def test_called_commands_exist():
    """CLI commands and nightly phases that the workflows call are real, with their options."""
    cli = {m for _, _, script in all_runs() for m in STAGEBENCH_CALL.findall(script)}
    assert cli <= STAGEBENCH_COMMANDS, f"unknown commands: {sorted(cli - STAGEBENCH_COMMANDS)}"
    phases = set()
    for name, job_id, script in all_runs():
        for phase, args in nightly_calls(script):
            assert phase in NIGHTLY_PHASES, f"{name}:{job_id}: no nightly phase {phase!r}"
            unknown = set(options(args)) - NIGHTLY_PHASES[phase]
            assert not unknown, f"{name}:{job_id}: nightly {phase} has no {sorted(unknown)}"
            phases.add(phase)
    assert phases == set(NIGHTLY_PHASES), "the scan is broken or a phase is never called"


def _one_call(job: dict, phase: str) -> dict[str, str]:
    calls = [args for s in runs(job) for p, args in nightly_calls(s) if p == phase]
    assert len(calls) == 1, f"expected one nightly {phase} call, found {len(calls)}"
    return options(calls[0])


def _step_using(job: dict, action: str, name: str | None = None) -> dict:
    found = [
        s
        for s in steps(job)
        if s.get("uses", "").startswith(f"{action}@")
        and (name is None or s.get("with", {}).get("name") == name)
    ]
    assert len(found) == 1, f"expected one {action} step named {name}"
    return found[0]


def test_nightly_pipeline():
    wf = ALL["nightly.yml"]
    jobs = wf["jobs"]
    assert wf["env"]["RESULTS_BRANCH"] == "benchmark-results"
    assert called_workflow(jobs["image"]) == "gpu-image.yml"

    restore = _one_call(jobs["restore"], "restore")
    assert restore == {
        "--remote": "origin",
        "--branch": "$RESULTS_BRANCH",
        "--results": ".asv/results",
    }
    uploaded = _step_using(jobs["restore"], "actions/upload-artifact")
    assert uploaded["with"]["path"] == ".asv/results"

    bench = jobs["bench"]
    assert bench["needs"] == ["image", "restore"]
    assert bench["env"]["IMAGE"] == "${{ needs.image.outputs.image }}"
    download = _step_using(bench, "actions/download-artifact")
    assert download["with"] == {"name": uploaded["with"]["name"], "path": ".asv/results"}
    container = [s for s in steps(bench) if runs_container(s)]
    assert len(container) == 1, "the nightly calls the container once"
    assert 'bash docker/gpu-run.sh "$IMAGE" python3 -m stagebench.nightly run' in joined(
        container[0]["run"]
    )
    assert _one_call(bench, "run") == {"--report": ".asv/report"}
    artifacts = {
        s["with"].get("name", "github-pages"): s["with"]["path"]
        for s in steps(bench)
        if "upload" in s.get("uses", "")
    }
    assert set(artifacts.values()) == {".asv/results", ".asv/report", ".asv/html"}
    assert artifacts["github-pages"] == ".asv/html"
    assert bench["outputs"]["alarm"].startswith("${{ steps.")

    store = jobs["store"]
    results = _step_using(store, "actions/download-artifact", "asv-results")["with"]["path"]
    call = _one_call(store, "store")
    push = next(s for s in steps(store) if "stagebench.nightly" in s.get("run", ""))
    assert expand(call["--results"], push["env"]) == results
    assert call["--remote"] == "origin" and call["--branch"] == "$RESULTS_BRANCH"
    assert call["--message"] == "Benchmark results for $SHA"
    assert push["env"]["SHA"] == "${{ github.sha }}"

    assert uses_action(jobs["deploy"], "actions/deploy-pages")
    assert jobs["deploy"]["environment"]["name"] == "github-pages"

    report = jobs["report"]
    assert "needs.bench.outputs.alarm == 'true'" in report["if"]
    assert "${{" not in report["env"]["ISSUE_TITLE"] + report["env"]["ISSUE_LABEL"]
    body = _step_using(report, "actions/download-artifact", "nightly-report")
    assert artifacts["nightly-report"] == ".asv/report"
    script = "\n".join(runs(report))
    assert '"$REPORT/alarm.md"' in script
    assert body["with"]["path"] == "${{ runner.temp }}/report"
    for needle in ("gh issue list", "gh issue edit", "gh issue create", "--body-file"):
        assert needle in script


def test_results_site_and_issue_only_from_the_default_branch():
    jobs = ALL["nightly.yml"]["jobs"]
    writers = {
        job_id
        for job_id, job in jobs.items()
        if any(level == "write" for level in job.get("permissions", {}).values())
        and not reaches_gpu(job)
    }
    assert writers == {"store", "deploy", "report"}
    for job_id in writers:
        cond = " ".join(str(jobs[job_id].get("if", "")).split())
        assert MAIN_ONLY in cond, f"nightly.yml:{job_id} must run only on the default branch"
        assert "||" not in cond and "always()" not in cond, f"nightly.yml:{job_id}: {cond}"


def test_gpu_jobs_run_the_image_by_digest():
    """The image job outputs what `image.sh ensure` prints (the digest reference); GPU jobs
    take IMAGE from it, or from `image.sh pull`, never from the tag `image.sh ref` gives."""
    build = ALL["gpu-image.yml"]["jobs"]["build"]
    ensure = next(s for s in steps(build) if "image.sh ensure" in s.get("run", ""))
    assert build["outputs"]["image"] == f"${{{{ steps.{ensure['id']}.outputs.image }}}}"
    assert re.search(r'image="\$\(bash docker/image\.sh ensure "\$tag"\)"', ensure["run"])
    assert 'echo "image=$image" >> "$GITHUB_OUTPUT"' in ensure["run"]
    checked = 0
    for name, wf in ALL.items():
        for job_id, job in wf["jobs"].items():
            for step in steps(job):
                if "gpu-run.sh" not in step.get("run", ""):
                    continue
                checked += 1
                source = step_env(wf, job, step).get("IMAGE", "")
                producer = re.fullmatch(
                    r"\$\{\{ (?:needs\.image|steps\.(\w+))\.outputs\.image }}", source
                )
                assert producer, f"{name}:{job_id}: IMAGE comes from {source!r}"
                if producer.group(1):
                    made = next(s for s in steps(job) if s.get("id") == producer.group(1))
                    assert 'image="$(bash docker/image.sh pull "$tag")"' in made["run"]
                else:
                    assert called_workflow(wf["jobs"]["image"]) == "gpu-image.yml"
    assert checked >= 3


def test_image_is_keyed_by_dockerfile_and_lock():
    script = (ROOT / "docker" / "image.sh").read_text(encoding="utf-8")
    assert "cat docker/Dockerfile docker/requirements.lock | sha256sum" in script
    assert "ghcr.io" in script and "docker push" in script
    # The registry login must not outlive the script.
    assert 'DOCKER_CONFIG="$(mktemp -d)"' in script and "docker logout" in script
    build = ALL["gpu-image.yml"]["jobs"]["build"]
    assert 'tag="$(bash docker/image.sh ref)"' in "\n".join(runs(build))


# Pull-request benchmarks: the pull request's code runs only inside the container.

PR = ALL["pr-bench.yml"]


def _pr_checkout() -> tuple[dict, dict]:
    for job in PR["jobs"].values():
        for step in steps(job):
            if "refs/pull/" in str(step.get("with", {}).get("ref", "")):
                return job, step
    raise AssertionError("pr-bench checks out no pull request")


def test_pr_bench_never_gets_registry_write():
    for job_id, job in PR["jobs"].items():
        assert called_workflow(job) is None, f"pr-bench:{job_id} calls a reusable workflow"
        assert job["permissions"].get("packages") in (None, "read"), f"pr-bench:{job_id}"
        scripts = "\n".join(runs(job))
        assert "image.sh ensure" not in scripts and "docker build" not in scripts
        assert not re.search(r"\bgit\b[^\n]*\bpush\b", scripts)
        if reaches_gpu(job):
            uploads = [s for s in steps(job) if "upload" in s.get("uses", "")]
            assert not uploads, "nothing the pull request's run wrote is stored"


def test_pr_bench_checks_out_the_pull_request_apart_from_the_host_scripts():
    job, pr_step = _pr_checkout()
    assert MAIN_ONLY in job["if"], "host-side scripts come from the default branch"
    checkouts = [s for s in steps(job) if s.get("uses", "").startswith("actions/checkout@")]
    trusted = checkouts[0]
    assert "ref" not in trusted.get("with", {}) and "path" not in trusted.get("with", {})
    assert pr_step is not trusted
    assert pr_step["with"]["ref"] == "refs/pull/${{ inputs.pr }}/head"
    assert pr_step["with"]["persist-credentials"] is False
    pr_dir = pr_step["with"]["path"]
    assert pr_dir not in ("", ".") and ".." not in pr_dir
    assert job["env"]["PR_DIR"] == pr_dir
    # gpu-run.sh mounts its working directory: the pull request's tree, not the host scripts'.
    container = [s for s in steps(job) if "gpu-run.sh" in s.get("run", "")]
    assert container and all(s.get("working-directory") == pr_dir for s in container)


def test_pr_bench_host_runs_no_pull_request_code():
    job, pr_step = _pr_checkout()
    pr_dir = pr_step["with"]["path"]
    env = {**PR.get("env", {}), **job["env"]}
    checked = 0
    for step in steps(job):
        if "run" not in step:
            continue
        cwd = posixpath.normpath(step.get("working-directory", "."))
        script = joined(step["run"])
        for path in SCRIPT_PATH.findall(script):
            resolved = posixpath.normpath(posixpath.join(cwd, expand(path, env)))
            assert not (resolved + "/").startswith(pr_dir + "/"), f"host runs {path} from {cwd}"
            checked += 1
        if (cwd + "/").startswith(pr_dir + "/"):
            # Inside the pull request's tree only the container may run anything of it.
            for line in script.splitlines():
                line = line.split("gpu-run.sh", 1)[0]
                assert not re.search(r"\b(python3?|nox|pip|make|source)\b", line), line
    assert checked >= 3


def test_pr_bench_caches_are_its_own_and_removed():
    job, _ = _pr_checkout()
    container = [s for s in steps(job) if "gpu-run.sh" in s.get("run", "")]
    assert container
    for step in container:
        root = step_env(PR, job, step).get("STAGEBENCH_CACHE_ROOT", "")
        assert root.startswith("${{ runner.temp }}/"), f"PR cache root {root!r}"
    removal = 'rm -rf "$PR_DIR" "$STAGEBENCH_CACHE_ROOT"'
    cleanup = [s for s in steps(job) if removal in s.get("run", "")]
    assert cleanup and cleanup[0].get("if") == "always()"
    assert cleanup[0]["env"]["STAGEBENCH_CACHE_ROOT"] == root
    assert steps(job).index(cleanup[0]) == len(steps(job)) - 1
    # Trusted runs keep gpu-run.sh's default cache root: the one untrusted runs never get.
    for name in ALL:
        if name != "pr-bench.yml":
            assert "STAGEBENCH_CACHE_ROOT" not in (WORKFLOWS / name).read_text(encoding="utf-8")


def test_pr_bench_checks_for_links_before_writing_into_the_pull_requests_tree():
    job, pr_step = _pr_checkout()
    ordered = steps(job)
    download = _step_using(job, "actions/download-artifact")
    assert download["with"]["path"].startswith(pr_step["with"]["path"] + "/.asv")
    before = ordered[ordered.index(pr_step) : ordered.index(download)]
    check = 'bash .github/scripts/no-links.sh "$PR_DIR/.asv"'
    assert any(s.get("run", "").strip() == check for s in before)


# The container's output: links and workflow commands.


def test_container_output_is_link_checked_before_it_is_read_or_uploaded():
    checked = 0
    for name, wf in ALL.items():
        for job_id, job in wf["jobs"].items():
            ran = False
            cleared: dict[str, list[str]] = {}
            for step in steps(job):
                where = f"{name}:{job_id}:{step.get('name', step.get('uses'))}"
                script = step.get("run", "")
                env = step_env(wf, job, step)
                if runs_container(step):
                    ran, cleared = True, {}
                    continue
                if "no-links.sh" in script:
                    paths = shlex.split(joined(script).split("no-links.sh", 1)[1])
                    cleared[step.get("id", "")] = [expand(p, env) for p in paths]
                    continue
                if not ran:
                    continue
                uploads = "upload" in step.get("uses", "")
                if uploads:
                    path = step["with"]["path"]
                elif ".asv/report" in script:
                    path = f"{env.get('PR_DIR', '')}/.asv/report".lstrip("/")
                else:
                    continue
                checked += 1
                cond = str(step.get("if", ""))
                ok = [
                    sid
                    for sid, paths in cleared.items()
                    if sid
                    and any(path == p or path.startswith(p + "/") for p in paths)
                    and f"steps.{sid}.outcome == 'success'" in cond
                ]
                assert ok, f"{where} reads {path} without a link check it depends on"
    assert checked >= 5


def _run_no_links(tmp_path: Path, *paths: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(NO_LINKS), *paths], cwd=tmp_path, capture_output=True, text=True
    )


def test_no_links_refuses_links_and_linked_parents(tmp_path):
    (tmp_path / "out" / "report").mkdir(parents=True)
    (tmp_path / "out" / "report" / "summary.md").write_text("ok\n")
    (tmp_path / "elsewhere" / "html").mkdir(parents=True)
    assert _run_no_links(tmp_path, "out", "out/report", "missing").returncode == 0

    (tmp_path / "out" / "report" / "x\n::error::y").symlink_to("/etc/passwd")
    result = _run_no_links(tmp_path, "out/report")
    assert result.returncode == 1
    # The link's name is the container's: quoted, and never a line of its own.
    assert not any(line.startswith("::error::y") for line in result.stdout.splitlines())
    (tmp_path / "out" / "report" / "x\n::error::y").unlink()

    (tmp_path / ".asv").symlink_to(tmp_path / "elsewhere")
    result = _run_no_links(tmp_path, ".asv/html")
    assert result.returncode == 1 and "symbolic link: .asv" in result.stdout
    assert _run_no_links(tmp_path, "/etc").returncode == 2


STOP_COMMANDS = re.compile(r'echo "::stop-commands::\$(\w+)"')
TOKEN_SOURCE = re.compile(r'^\s*(\w+)="\$\((?:openssl rand -hex 16|uuidgen)\)"$', re.M)


def _container_steps() -> list[tuple[str, dict, dict, dict]]:
    found = []
    for name, wf in ALL.items():
        for job in wf["jobs"].values():
            found += [(name, wf, job, step) for step in steps(job) if runs_container(step)]
    return found


def test_container_steps_stop_workflow_commands():
    found = _container_steps()
    assert len(found) >= 4
    for name, _, _, step in found:
        where = f"{name}:{step.get('name')}"
        script = step["run"]
        stop = STOP_COMMANDS.search(script)
        assert stop, f"{where}: wrap the container in ::stop-commands::"
        token = TOKEN_SOURCE.search(script)
        assert token and token.group(1) == stop.group(1), f"{where}: random token first"
        assert token.start() < stop.start()
        resume = script.rfind(f'echo "::${stop.group(1)}::"')
        calls = [m.start() for m in CONTAINER_CALL.finditer(script)]
        assert stop.end() < min(calls) and max(calls) < resume, f"{where}: resume after it"
        for line in joined(script).splitlines():
            if CONTAINER_CALL.search(line):
                # Steps run under `bash -e`: a failing container must not skip the resume.
                assert line.rstrip().endswith("|| status=$?"), f"{where}: {line.strip()}"
                assert "GITHUB_STEP_SUMMARY" not in line, "summaries come from files"


STAND_IN = """#!/usr/bin/env bash
if [[ ${1:-} == ref ]]; then echo ghcr.io/o/r/gpu:tag; exit 0; fi
echo "::warning::from the container" >&2
echo "::set-output name=image::evil"
exit 3
"""


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
@pytest.mark.parametrize(
    "index",
    [
        pytest.param(i, id=f"{n}:{s.get('name')}")
        for i, (n, _, _, s) in enumerate(_container_steps())
    ],
)
def test_container_steps_resume_commands_whatever_the_container_does(tmp_path, index):
    """Run the step's own shell as GitHub does (bash -e -o pipefail) with a stand-in for the
    container that prints workflow commands and fails: they fall between the stop and the
    resume, the token is fresh, and the step still records or returns the status."""
    name, wf, job, step = _container_steps()[index]
    for script in ("gpu-run.sh", "image.sh"):
        path = tmp_path / "docker" / script
        path.parent.mkdir(exist_ok=True)
        path.write_text(STAND_IN)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    cwd = tmp_path / step.get("working-directory", ".")
    cwd.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "GITHUB_OUTPUT": str(tmp_path / "output"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
        "RUNNER_TEMP": str(tmp_path),
        **{k: "x" for k in step_env(wf, job, step)},
    }
    tokens = []
    for _ in range(2):
        result = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines = result.stdout.splitlines()
        stop = next(i for i, line in enumerate(lines) if line.startswith("::stop-commands::"))
        token = lines[stop].removeprefix("::stop-commands::")
        assert re.fullmatch(r"[0-9a-f]{32}", token)
        resume = lines.index(f"::{token}::")
        injected = [i for i, line in enumerate(lines) if "from the container" in line]
        assert injected and all(stop < i < resume for i in injected), result.stdout
        output = tmp_path / "output"
        recorded = output.exists() and "status=3" in output.read_text()
        assert result.returncode == 3 or recorded, f"{name}: the failure was lost"
        tokens.append(token)
    assert tokens[0] != tokens[1]


def _verdict_step(name: str) -> tuple[dict, dict]:
    wf = ALL[name]
    for job in wf["jobs"].values():
        for step in steps(job):
            if step.get("name") == "Verdict":
                return job, step
    raise AssertionError(f"{name} has no Verdict step")


@pytest.mark.parametrize("name", ["nightly.yml", "pr-bench.yml"])
@pytest.mark.parametrize(
    ("status", "verdict", "alarm", "ok", "annotation"),
    [
        ("0", "clean", False, True, None),
        ("1", "regression", True, True, "::warning::"),
        ("3", "short-history", False, True, "::warning::"),
        ("3", "cannot-judge", False, False, "::error::"),
        ("2", "bad-input", False, False, "::error::"),
        ("4", "failed", False, False, "::error::"),
        ("4", "::error::x\n::add-mask::y", False, False, "(verdict: unreadable)"),
    ],
)
def test_verdict_step(tmp_path, name, status, verdict, alarm, ok, annotation):
    """The exit codes of `nightly run`: 0 clean, 1 regression (alarm, not a failure), 3 with
    short-history a warning, everything else a failure; the summary comes from the file."""
    job, step = _verdict_step(name)
    pr_dir = job.get("env", {}).get("PR_DIR", ".")
    report = tmp_path / pr_dir / ".asv" / "report"
    report.mkdir(parents=True)
    (report / "summary.md").write_text("| table |\n")
    (report / "verdict").write_text(verdict + "\n")
    if alarm:
        (report / "alarm.md").write_text("regressed\n")
    output, summary = tmp_path / "output", tmp_path / "summary"
    env = {
        "PATH": os.environ["PATH"],
        "GITHUB_OUTPUT": str(output),
        "GITHUB_STEP_SUMMARY": str(summary),
        "STATUS": status,
        "PR_DIR": pr_dir,
        "PR": "12",
        "SHA": "abc",
    }
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert (result.returncode == 0) is ok, result.stdout + result.stderr
    assert "| table |" in summary.read_text()
    if annotation:
        assert annotation in result.stdout
    else:
        assert "::" not in result.stdout
    outputs = output.read_text() if output.exists() else ""
    assert ("alarm=true" in outputs) is (alarm and name == "nightly.yml")


# Linters that run in `nox -s lint`.


def test_lint_session_audits_workflows_offline_and_fails_on_medium():
    source = (ROOT / "noxfile.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    lint = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "lint")
    calls = [
        [a.value for a in node.args if isinstance(a, ast.Constant)]
        for node in ast.walk(lint)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "run"
    ]
    zizmor = [args for args in calls if args and args[0] == "zizmor"]
    assert zizmor, "nox -s lint does not run zizmor"
    args = zizmor[0]
    assert "--offline" in args and ".github/workflows" in args
    assert args[args.index("--min-severity") + 1] == "medium"
    assert "--no-exit-codes" not in args
    assert re.search(r'^ZIZMOR = "zizmor==[\d.]+"', source, re.M), "pin zizmor's version"


def _zizmor() -> str:
    found = shutil.which("zizmor") or shutil.which("zizmor", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("zizmor is not installed (nox -s lint installs it)")
    return found


def test_zizmor_finds_no_medium_or_high_problem():
    command = [_zizmor(), "--offline", "--min-severity", "medium", ".github/workflows"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_fails_on_a_new_finding(tmp_path):
    """The gate really gates: a template injection into a run script fails the audit."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: issues\npermissions: {}\njobs:\n  a:\n    runs-on: ubuntu-24.04\n"
        "    permissions: {}\n    steps:\n"
        "      - run: echo ${{ github.event.issue.title }}\n"
    )
    command = [_zizmor(), "--offline", "--min-severity", "medium", str(bad)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0
    assert "template-injection" in result.stdout


def test_container_runs_the_checkouts_code_under_asv_too():
    """asv strips PYTHONPATH entries from its benchmark processes; ASV_PYTHONPATH is asv's own
    way in. Without it the nightly would measure the stagebench baked into the image."""
    script = (ROOT / "docker" / "gpu-run.sh").read_text()
    assert "--env PYTHONPATH=/workspace/src" in script
    assert "--env ASV_PYTHONPATH=/workspace/src" in script
    # The full Results travel with asv's results to the results branch.
    assert "--env STAGEBENCH_STORE=/workspace/.asv/results/" in script
