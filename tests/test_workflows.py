"""Policy checks for the GitHub Actions workflows.

Workflows only run on GitHub, so these tests hold their text to the rules that keep the GPU
runner safe and the pipeline wired to real nox sessions and CLI commands.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
GPU_LABELS = {"self-hosted", "linux", "x64", "gpu", "h100"}
GPU_GROUP = "h100-gpu"
GPU_LABEL_GATE = "run-gpu-bench"
SAME_REPO = "github.event.pull_request.head.repo.full_name == github.repository"
STAGEBENCH_COMMANDS = {"env", "list", "run", "matrix", "regressions"}
TOKEN_MARKERS = ("secrets.", "github.token", "GITHUB_TOKEN", "GH_TOKEN")
PINNED_USES = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
VERSION_COMMENT = re.compile(r"#\s*(v\d+\.\d+\.\d+)\s*$")
NOX_CALL = re.compile(r"\bnox\s+(?:-s|--session|--sessions)\s+([\w-]+)")
STAGEBENCH_CALL = re.compile(r"(?<![\w./-])stagebench\s+([a-z][\w-]*)")


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


def all_runs() -> Iterator[tuple[str, str, str]]:
    for name, wf in ALL.items():
        for job_id, job in wf["jobs"].items():
            for script in runs(job):
                yield name, job_id, script


def runs_container(step: dict) -> bool:
    script = step.get("run", "")
    return "gpu-run.sh" in script or re.search(r"\bdocker\s+run\b", script) is not None


def uses_action(job: dict, action: str) -> bool:
    return any(step.get("uses", "").startswith(f"{action}@") for step in steps(job))


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
    if re.search(r"\bgit\b[^\n]*\bpush\b", scripts):
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
    for name in ("ci.yml", "nightly.yml", "bisect.yml", "gpu-image.yml"):
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
    assert any(j.startswith("nightly.yml:") for j in gpu_jobs), "nightly has no GPU job"
    assert any(j.startswith("bisect.yml:") for j in gpu_jobs), "bisect has no GPU job"


@pytest.mark.parametrize("name", sorted(ALL))
def test_gpu_runner_never_runs_fork_code(name):
    wf = ALL[name]
    on = triggers(wf)
    gpu = {job_id: job for job_id, job in wf["jobs"].items() if reaches_gpu(job)}
    if not gpu:
        return
    allowed = {"schedule", "workflow_dispatch", "workflow_call", "pull_request"}
    assert set(on) <= allowed, f"{name}: GPU jobs triggered by {sorted(set(on) - allowed)}"
    if name in ("nightly.yml", "bisect.yml"):
        assert set(on) <= {"schedule", "workflow_dispatch"}
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
    if "pull_request" in on:
        config = on["pull_request"] or {}
        assert config.get("types") == ["labeled"], f"{name}: run only when a label is applied"
        # Every job of such a workflow is gated, so none can feed the GPU jobs fork code.
        for job_id, job in wf["jobs"].items():
            cond = " ".join(str(job.get("if", "")).split())
            assert f"'{GPU_LABEL_GATE}'" in cond, f"{name}:{job_id} lacks the label gate"
            assert SAME_REPO in cond, f"{name}:{job_id} lacks the same-repository gate"
            assert "||" not in cond, f"{name}:{job_id}: `||` could bypass the gates"


def test_nightly_and_bisect_triggers():
    assert set(triggers(ALL["nightly.yml"])) == {"schedule", "workflow_dispatch"}
    assert set(triggers(ALL["bisect.yml"])) == {"workflow_dispatch"}
    inputs = triggers(ALL["bisect.yml"])["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"good", "bad", "benchmark"}


def test_no_secrets_reach_the_benchmark_container():
    for name, wf in ALL.items():
        text = (WORKFLOWS / name).read_text(encoding="utf-8")
        assert "secrets." not in text, f"{name} uses repository secrets"
        for job_id, job in wf["jobs"].items():
            assert "secrets" not in job, f"{name}:{job_id} passes secrets to a workflow"
            container_steps = [step for step in steps(job) if runs_container(step)]
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


def test_token_only_in_publish_and_issue_steps():
    for name, wf in ALL.items():
        for job_id, job in wf["jobs"].items():
            for step in steps(job):
                if "github.token" not in json.dumps(step.get("env", {})):
                    continue
                script = step.get("run", "")
                publishes = "image.sh" in script or re.search(r"\bgh (issue|label)\b", script)
                assert publishes, f"{name}:{job_id}: token given to {step.get('name', step)}"
                assert not runs_container(step)


def _docker_run_tokens() -> list[str]:
    script = (ROOT / "docker" / "gpu-run.sh").read_text(encoding="utf-8")
    joined = script.replace("\\\n", " ")
    lines = [line for line in joined.splitlines() if "docker run" in line]
    assert len(lines) == 1, "docker/gpu-run.sh should hold exactly one docker run"
    return shlex.split(lines[0])


def test_container_gets_only_explicit_environment_and_expected_mounts():
    tokens = _docker_run_tokens()
    env: dict[str, str] = {}
    volumes: set[str] = set()
    for flag in ("--env-file", "--privileged", "--network=host", "--pid=host"):
        assert flag not in tokens, f"{flag} widens the container"
    for flag, value in itertools.pairwise(tokens):
        if flag in ("--env", "-e"):
            key, sep, val = value.partition("=")
            assert sep, f"--env {value} would copy the host's value into the container"
            env[key] = val
        if flag in ("--volume", "-v"):
            volumes.add(value.split(":")[1])
    assert not any(m in json.dumps(env) for m in TOKEN_MARKERS)
    assert env.get("STAGEBENCH_NOX_REUSE_SYSTEM") == "1"
    assert env.get("PYTHONPATH") == "/workspace/src", "run the checkout, not the baked copy"
    assert env.get("STAGEBENCH_TRUSTED_HUB_ORGS") == "kernels-community"
    assert tokens[tokens.index("--gpus") + 1] == "all"
    assert {"/workspace", "/workspace/.asv/results", "/cache/inductor", "/cache/huggingface"} <= (
        volumes
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
    assert {"lint", "tests", "bench", "publish", "bisect"} <= called
    missing = called - _nox_sessions()
    assert not missing, f"workflows call nox sessions that noxfile.py lacks: {sorted(missing)}"


def test_bisect_is_called_with_good_bad_benchmark():
    calls = [script for _, _, script in all_runs() if re.search(r"nox\s+-s\s+bisect\b", script)]
    assert calls
    for script in calls:
        tail = script.replace("\\\n", " ").split("nox -s bisect", 1)[1]
        args = shlex.split(tail.split("2>&1")[0])
        assert args[0] == "--" and len(args) == 4, f"bisect posargs are {args[1:]}"


def test_called_stagebench_commands_exist():
    called = {m for _, _, script in all_runs() for m in STAGEBENCH_CALL.findall(script)}
    assert called, "no stagebench call found: the scan is broken"
    assert called <= STAGEBENCH_COMMANDS, (
        f"unknown commands: {sorted(called - STAGEBENCH_COMMANDS)}"
    )


def test_nightly_pipeline():
    wf = ALL["nightly.yml"]
    jobs = wf["jobs"]
    assert wf["env"]["RESULTS_BRANCH"] == "benchmark-results"
    assert called_workflow(jobs["image"]) == "gpu-image.yml"

    bench = "\n".join(runs(jobs["bench"]))
    assert re.search(r"gpu-run\.sh \"\$IMAGE\" nox -s bench\b", bench)
    assert re.search(r"gpu-run\.sh \"\$IMAGE\" nox -s publish\b", bench)
    assert "stagebench regressions" in bench and "--format markdown" in bench
    assert "GITHUB_STEP_SUMMARY" in bench
    pages = [s for s in steps(jobs["bench"]) if "upload-pages-artifact" in s.get("uses", "")]
    assert pages and pages[0]["with"]["path"] == ".asv/html"

    restore = "\n".join(runs(jobs["restore"]))
    store = "\n".join(runs(jobs["store"]))
    assert 'git fetch --no-tags --depth=1 origin "$RESULTS_BRANCH"' in restore
    assert 'push origin "HEAD:refs/heads/$RESULTS_BRANCH"' in store

    assert uses_action(jobs["deploy"], "actions/deploy-pages")
    assert jobs["deploy"]["environment"]["name"] == "github-pages"

    report = jobs["report"]
    assert "needs.bench.outputs.regressed == 'true'" in report["if"]
    assert "${{" not in report["env"]["ISSUE_TITLE"] + report["env"]["ISSUE_LABEL"]
    script = "\n".join(runs(report))
    for needle in ("gh issue list", "gh issue edit", "gh issue create", "regression_issue.py"):
        assert needle in script


def test_image_is_keyed_by_dockerfile_and_lock():
    script = (ROOT / "docker" / "image.sh").read_text(encoding="utf-8")
    assert "cat docker/Dockerfile docker/requirements.lock | sha256sum" in script
    assert "ghcr.io" in script and "docker push" in script
    # The registry login must not outlive the script.
    assert 'DOCKER_CONFIG="$(mktemp -d)"' in script and "docker logout" in script
    build = ALL["gpu-image.yml"]["jobs"]["build"]
    assert "image.sh ref" in "\n".join(runs(build))


def _regression_issue():
    path = ROOT / ".github" / "scripts" / "regression_issue.py"
    spec = importlib.util.spec_from_file_location("regression_issue", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_issue_body_lists_runnable_bisect_commands():
    mod = _regression_issue()
    bench = "stages.Train.time_step('liger', 1024)"
    report = {
        "regressions": [
            {"benchmark": bench, "good": "1a2b3c4", "bad": "5d6e7f8"},
            {"benchmark": bench, "good": "1a2b3c4", "bad": "5d6e7f8"},
            {"benchmark": "stages.Peak.mem", "good": "aaaa", "bad": "b`rm -rf /`"},
            {"benchmark": "stages.Peak.mem"},
        ]
    }
    table = "| benchmark | change |\n|---|---|\n| x | +12% |"
    body = mod.issue_body(table, report, "https://example.invalid/run/1")
    assert body.startswith(mod.MARKER)
    assert table in body and "https://example.invalid/run/1" in body
    commands = [line for line in body.splitlines() if line.startswith("nox -s bisect")]
    assert len(commands) == 1
    assert shlex.split(commands[0]) == ["nox", "-s", "bisect", "--", "1a2b3c4", "5d6e7f8", bench]
    assert mod.bisect_commands(report["regressions"]) == [commands[0]]


def test_issue_body_without_commit_range_falls_back(tmp_path, capsys):
    mod = _regression_issue()
    (tmp_path / "r.md").write_text("| t |\n", encoding="utf-8")
    (tmp_path / "r.json").write_text("not json", encoding="utf-8")
    assert mod.main(["--markdown", str(tmp_path / "r.md"), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "| t |" in out
    assert "nox -s bisect -- <good> <bad> <benchmark>" in out


def test_container_runs_the_checkouts_code_under_asv_too():
    """asv strips PYTHONPATH entries from its benchmark processes; ASV_PYTHONPATH is asv's own
    way in. Without it the nightly would measure the stagebench baked into the image."""
    script = (ROOT / "docker" / "gpu-run.sh").read_text()
    assert "--env PYTHONPATH=/workspace/src" in script
    assert "--env ASV_PYTHONPATH=/workspace/src" in script
    # The full Results travel with asv's results to the results branch.
    assert "--env STAGEBENCH_STORE=/workspace/.asv/results/" in script
