"""Host syncs inside a step: counted per line from torch's sync debug mode.

No CUDA here, so torch's own warning is replaced by a FAKE one with the same text, raised from
known lines of this file, and torch.cuda's mode switches are FAKEs that record what was asked.
What the real mode flags on a GPU is not tested here: that needs an H100 run.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from stagebench import host_syncs

FAKE_CUDA = torch.device("cuda")  # only its type is read: nothing runs on it


# stacklevel 1: the warning names the line that raised it, as torch's C++ warning names the
# Python line that called the synchronizing op.
def _fake_item():
    warnings.warn(f"{host_syncs.SYNC_WARNING} (planted 1)", stacklevel=1)


def _fake_nonzero():
    warnings.warn(f"{host_syncs.SYNC_WARNING} (planted 2)", stacklevel=1)


def _line_of(fn) -> str:
    return f"test_host_syncs.py:{fn.__code__.co_firstlineno + 1}"


@pytest.fixture
def fake_cuda_mode(monkeypatch):
    """FAKE torch.cuda mode switches: the calls made, in order."""
    calls = []
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: calls.append(mode))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))
    return calls


def test_each_line_is_counted_as_often_as_it_synced(fake_cuda_mode):
    def step():
        for _ in range(36):  # one per layer, as transformers' FlashAttention 2 check does
            _fake_item()
        _fake_nonzero()
        warnings.warn("an unrelated warning is not a sync", stacklevel=1)

    found = host_syncs.count(step, FAKE_CUDA)
    assert found == [
        host_syncs.Site(_line_of(_fake_item), 36),
        host_syncs.Site(_line_of(_fake_nonzero), 1),
    ]
    assert fake_cuda_mode == ["warn", 0, "sync"]  # on for the step, then the old mode back
    assert host_syncs.note(found) == (
        f"37 a step: {_line_of(_fake_item)} x36, {_line_of(_fake_nonzero)} x1"
    )


def test_the_mode_is_restored_when_the_step_fails(fake_cuda_mode):
    def step():
        _fake_item()
        raise torch.cuda.OutOfMemoryError("planted")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        host_syncs.count(step, FAKE_CUDA)
    assert fake_cuda_mode == ["warn", 0]
    # The stage's own note: said in one line, the measured stage stands.
    assert host_syncs.observe(step, FAKE_CUDA) == (
        "not counted: the extra step failed: OutOfMemoryError: planted"
    )


def test_a_step_without_syncs_says_none(fake_cuda_mode):
    assert host_syncs.observe(lambda: None, FAKE_CUDA) == "none flagged in one step"


def test_a_cpu_step_is_not_counted_and_says_why():
    ran = []
    note = host_syncs.observe(lambda: ran.append(1), torch.device("cpu"))
    assert note == host_syncs.UNAVAILABLE_ON_CPU and ran == []


def test_the_note_lists_the_busiest_lines_and_counts_them_all():
    found = [host_syncs.Site(f"pkg/m.py:{n}", 10 - n) for n in range(6)]
    note = host_syncs.note(found)
    assert note.startswith("45 a step: pkg/m.py:0 x10, pkg/m.py:1 x9, pkg/m.py:2 x8, pkg/m.py:3 x7")
    assert note.endswith("and 2 more line(s)")


MODULES = {  # loaded modules' files, as _module_files gives them
    "/opt/venv/lib/python3.12/site-packages/liger_kernel/ops/x.py": "liger_kernel/ops/x.py",
    "/home/alice/src/stagebench/runner.py": "stagebench/runner.py",
    "/home/alice/.cache/stagebench/inductor/ab/cabc123.py": "cabc123.py",
}
GENERATED = ["/home/alice/.cache/stagebench/inductor"]


@pytest.mark.parametrize(
    "filename, short",
    [
        ("/opt/venv/lib/python3.12/site-packages/liger_kernel/ops/x.py", "liger_kernel/ops/x.py"),
        ("/home/alice/src/stagebench/runner.py", "stagebench/runner.py"),
        # generated code inside a loaded module's tree is still generated code
        ("/home/alice/.cache/stagebench/inductor/ab/cabc123.py", "<inductor-generated code>"),
        ("/home/alice/.cache/stagebench/inductorfoo/x.py", "x.py"),  # a prefix is not a parent
        ("/home/alice/script.py", "script.py"),  # of no loaded module: its bare name
        ("C:\\Users\\alice\\script.py", "script.py"),
        ("<eval_with_key>.12", "<eval_with_key>"),  # FX's counter differs per process
        ("<frozen runpy>", "<frozen runpy>"),
        ("/home/alice/", "<unnamed>"),
        ("", "<unnamed>"),
    ],
)
def test_files_are_named_by_their_module_never_by_a_machine_path(filename, short):
    assert host_syncs.short_path(filename, MODULES, GENERATED) == short


def test_this_process_names_its_own_files_by_module():
    assert host_syncs.short_path(host_syncs.__file__) == "stagebench/host_syncs.py"
    assert host_syncs.short_path(torch.__file__) == "torch/__init__.py"
    assert host_syncs.short_path(torch.nn.functional.__file__) == "torch/nn/functional.py"


def test_sync_sites_use_the_generated_code_directory_of_the_process(monkeypatch, tmp_path):
    """Inductor's directory is read from the variable the parent sets, never asked of torch
    (its cache_dir() creates the directory and sets the variable as a side effect)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    caught = [
        warnings.WarningMessage(
            host_syncs.SYNC_WARNING, UserWarning, str(tmp_path / "ab" / "c1.py"), 7
        )
    ]
    assert host_syncs.sites(caught) == [host_syncs.Site("<inductor-generated code>:7", 1)]
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert host_syncs.sites(caught) == [host_syncs.Site("c1.py:7", 1)]


@pytest.mark.parametrize(
    "message, said",
    [
        ("no kernel in /home/alice/.cache/triton/ab/k.cubin\nsecond line", "no kernel in <path>"),
        ("Permission denied: '/tmp/torchinductor_alice'", "Permission denied: '<path>'"),
        ("C:\\Users\\alice\\x.py failed", "<path> failed"),
        # torch's CUDA OOM text: its URL and numbers stay as they are
        (
            "Tried to allocate 2.00 GiB (https://pytorch.org/docs/stable/notes/cuda.html#env)",
            "Tried to allocate 2.00 GiB (https://pytorch.org/docs/stable/notes/cuda.html#env)",
        ),
        ("shape [2, 2048/4096/8] mismatch", "shape [2, 2048/4096/8] mismatch"),
    ],
)
def test_a_failure_note_names_no_path(fake_cuda_mode, message, said):
    def step():
        raise RuntimeError(message)

    assert host_syncs.observe(step, FAKE_CUDA) == (
        f"not counted: the extra step failed: RuntimeError: {said}"
    )


def test_torch_turns_each_cpp_warning_into_one_python_warning_at_the_calling_line(monkeypatch):
    """What counting relies on, with torch's real C++ warning path (TORCH_WARN, as the sync debug
    mode uses): every occurrence is a warning of its own, and one raised in the backward is named
    by the `backward()` call inside torch.autograd."""
    monkeypatch.setattr(host_syncs, "SYNC_WARNING", "Warn from backward")
    x = torch.randn(3, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            torch.ops.aten._test_warn_in_autograd(x).sum().backward()
    (site,) = host_syncs.sites(caught)
    assert site.where.startswith("torch/autograd/") and site.calls == 3
