"""kernelize on the CPU, for real: kernels.kernelize() with the RMSNorm kernel stagebench ships."""

from __future__ import annotations

import http.server
import math
import sys
import threading
from pathlib import Path

import pytest
import torch

from stagebench import hub, optim, stages
from stagebench.models import build_model
from stagebench.optim import StageContext
from stagebench.optim import kernelize as kz
from stagebench.runner import run_stage

kernels = pytest.importorskip(
    "kernels", reason="kernels not installed (pip install stagebench[gpu])"
)
from kernels.layer.globals import _KERNEL_MAPPING  # noqa: E402  (the mapping's only handle)
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm  # noqa: E402

CPU = torch.device("cpu")
VARIANTS = {"torch-cpu", "torch-cuda"}  # a CUDA build of torch resolves the CUDA variant


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _tiny():
    return build_model("tiny", device=CPU, dtype=torch.float32, seed=0, attn_implementation="sdpa")


def _norms(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, Qwen3RMSNorm)]


def _batch(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 64), generator=torch.Generator().manual_seed(1))


def _marks() -> dict:
    return {k: v for k, v in vars(Qwen3RMSNorm).items() if k in kz._MARKS}


MARKS_AT_IMPORT = _marks()  # as transformers left the class, before any stage ran


def test_check_says_why_when_kernels_is_missing(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "kernels", None)  # `import kernels` now fails
    reason = "kernels not installed (pip install stagebench[gpu])"
    assert kz.check(CPU) == reason
    assert optim.unavailable_reason(stages.resolve("sdpa+kernelize"), CPU) == f"kernelize: {reason}"


def test_check_passes_on_cpu_when_kernels_is_installed():
    assert kz.check(CPU) is None
    assert optim.unavailable_reason(stages.resolve("sdpa+kernelize"), CPU) is None
    assert optim.unavailable_reason(stages.resolve("01_kernelize_sdpa_compile"), CPU) is None


def test_check_names_devices_without_a_kernel_build():
    assert "no RMSNorm kernel for mps" in kz.check(torch.device("mps"))


def test_env_var_decides_offline_before_any_probe(monkeypatch: pytest.MonkeyPatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("the hub was probed although the environment says offline")

    monkeypatch.setattr(hub, "probe", no_probe)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mapping, source, offline = kz.choose_source(kernels, "cuda")
    assert offline == "HF_HUB_OFFLINE=1"
    assert source == "local: stagebench/hub_kernels/rmsnorm (HF_HUB_OFFLINE=1)"
    assert set(mapping) == {"RMSNorm"} and set(mapping["RMSNorm"]) == {"cuda"}
    # No hub kernel for a CPU either: decided from the mapping, still without the network.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    _, source, offline = kz.choose_source(kernels, "cpu")
    assert offline == "the hub mapping has no RMSNorm kernel for cpu"
    assert source.startswith("local: stagebench/hub_kernels/rmsnorm (the hub mapping")


class _Answer404(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.send_response(404)  # any answer means the hub is reachable
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def local_hub():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Answer404)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_probe_tells_an_answering_hub_from_a_dead_one(local_hub, monkeypatch: pytest.MonkeyPatch):
    hub.probe.cache_clear()
    assert hub.probe(local_hub, 2.0) is None
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens there
    assert hub.probe(dead, 1.0).startswith("hub not reachable within 1 s")
    # An answering hub with a CUDA kernel in the mapping: the hub is the source.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", local_hub)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    mapping, source, offline = kz.choose_source(kernels, "cuda")
    assert offline is None
    assert source.startswith("hub: kernels-community/liger-kernels (transformers'")
    assert "RMSNorm" in mapping
    # The same answering hub, but its organisation is not trusted here: the local copy is used.
    monkeypatch.setenv("STAGEBENCH_TRUSTED_HUB_ORGS", "someone-else")
    _, source, offline = kz.choose_source(kernels, "cuda")
    assert offline.startswith("hub org 'kernels-community' is not trusted")
    assert source.startswith("local: stagebench/hub_kernels/rmsnorm (hub org")
    hub.probe.cache_clear()


def _apply(model, spec: str = "sdpa+kernelize") -> StageContext:
    ctx = StageContext(stages.resolve(spec), CPU, torch.float32)
    optim.registry()["kernelize"].apply(model, ctx)
    return ctx


def test_offline_kernelize_replaces_every_rmsnorm_and_matches_numerically(offline):
    ref, model = _tiny(), _tiny()
    ids = _batch(model.config.vocab_size)
    with (ctx := StageContext(stages.resolve("sdpa+kernelize"), CPU, torch.float32)).cleanup:
        optim.registry()["kernelize"].apply(model, ctx)
        norms = _norms(model)
        layers = model.config.num_hidden_layers
        assert len(norms) == 4 * layers + 1  # input, post-attention, q_norm, k_norm; final norm
        for norm in norms:
            forward = norm.forward.__func__
            assert forward is not Qwen3RMSNorm.forward
            source = Path(forward.__code__.co_filename)
            assert kz.LOCAL_REPO in source.parents and source.parent.name in VARIANTS
        for norm in _norms(ref):
            assert norm.forward.__func__ is Qwen3RMSNorm.forward
        note = ctx.notes["kernelize"]
        assert note.startswith("local: stagebench/hub_kernels/rmsnorm (HF_HUB_OFFLINE=1);")
        assert f"RMSNorm {len(norms)}/{len(norms)}" in note and "mode=training;" in note

        out_ref = ref(input_ids=ids, labels=ids)
        out = model(input_ids=ids, labels=ids)
        torch.testing.assert_close(out.logits, out_ref.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.loss, out_ref.loss, rtol=1e-6, atol=1e-6)
        out_ref.loss.backward()
        out.loss.backward()
        for (name, p_ref), p in zip(ref.named_parameters(), model.parameters(), strict=True):
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_local_backward_matches_autograd(dtype):
    """The hand-written backward against autograd through transformers' own forward (float32
    inside, as both upcast) and against float64 math, on an odd shape."""
    layers = kernels.get_local_kernel(kz.LOCAL_REPO).layers
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 48, generator=gen).to(dtype).requires_grad_()
    norm = Qwen3RMSNorm(48, eps=1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48, generator=gen))
    grad_out = torch.randn(3, 5, 48, generator=gen).to(dtype)

    def grads(fn, *inputs):
        out = fn(*inputs)
        return (out, *torch.autograd.grad(out, inputs, grad_out.to(out.dtype)))

    w = norm.weight.detach().clone().requires_grad_()
    ours = grads(lambda x, w: layers.RMSNormFunction.apply(x, w, 1e-6), x, w)
    theirs = grads(lambda x, w: Qwen3RMSNorm.forward(norm, x), x, norm.weight)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for a, b, what in zip(ours, theirs, ("output", "grad x", "grad weight"), strict=True):
        assert a.dtype == b.dtype == dtype, what
        torch.testing.assert_close(a, b, **tol, msg=what)
    if dtype == torch.float32:
        x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        exact = grads(lambda x, w: w * x * torch.rsqrt(x.pow(2).mean(-1, True) + 1e-6), x64, w64)
        for a, b in zip(ours, exact, strict=True):
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


def test_compile_stage_leaves_rmsnorm_to_inductor_as_the_hub_mapping_does(offline):
    """transformers' RMSNorm entry has no torch.compile mode; the local one mirrors it."""
    model = _tiny()
    with (ctx := _apply(model, "sdpa+kernelize+compile")).cleanup:
        note = ctx.notes["kernelize"]
        assert "RMSNorm 0/9 (no torch.compile entry" in note
        assert "mode=training+torch_compile" in note
        assert all(n.forward.__func__ is Qwen3RMSNorm.forward for n in _norms(model))


def test_local_kernel_is_compile_safe(offline):
    """can_torch_compile holds: kernels accepts the layer for a TORCH_COMPILE entry (it refuses
    one without the flag) and dynamo captures it whole (aot_eager: no C++ build needed)."""
    model = _tiny()
    compile_mode = kernels.Mode.TRAINING | kernels.Mode.TORCH_COMPILE
    repo = kernels.LocalLayerRepository(kz.LOCAL_REPO, layer_name="RMSNorm")
    with _apply(model).cleanup:  # marks the class for this stage
        mapping = {"RMSNorm": {"cpu": {compile_mode: repo}}}
        with kernels.use_kernel_mapping(mapping, inherit_mapping=False):
            kernels.kernelize(model, mode=compile_mode, device="cpu")
        norm = model.model.norm
        assert norm.forward.__func__ is not Qwen3RMSNorm.forward
        x = torch.randn(2, 7, model.config.hidden_size, requires_grad=True)
        eager = norm(x)
        eager.sum().backward()
        grad_eager, x.grad = x.grad, None
        compiled = torch.compile(norm, backend="aot_eager", fullgraph=True)(x)
        compiled.sum().backward()
        torch.testing.assert_close(compiled, eager)
        torch.testing.assert_close(x.grad, grad_eager)


def test_teardown_restores_the_kernel_mapping_and_the_class(offline):
    outer = {"Elsewhere": {"cpu": kernels.LocalLayerRepository(kz.LOCAL_REPO, layer_name="X")}}
    assert _marks() == MARKS_AT_IMPORT, "an earlier stage left the class marked"
    with kernels.use_kernel_mapping(outer, inherit_mapping=False):
        before = _KERNEL_MAPPING.get()
        ctx = StageContext(stages.resolve("sdpa+kernelize"), CPU, torch.float32)
        with ctx.cleanup:
            optim.registry()["kernelize"].apply(_tiny(), ctx)
            assert set(_KERNEL_MAPPING.get()) == {"RMSNorm"}  # the stage's own, not inherited
            assert Qwen3RMSNorm.kernel_layer_name == "RMSNorm"
        assert _KERNEL_MAPPING.get() is before
    assert _marks() == MARKS_AT_IMPORT
    # A model built after the stage keeps transformers' forward when kernelized without a mapping.
    model = _tiny()
    kernels.kernelize(model, mode=kernels.Mode.TRAINING, device="cpu")
    assert all(n.forward.__func__ is Qwen3RMSNorm.forward for n in _norms(model))


def test_model_without_rmsnorm_is_unavailable(offline):
    ctx = StageContext(stages.resolve("sdpa+kernelize"), CPU, torch.float32)
    with ctx.cleanup, pytest.raises(optim.Unavailable, match="no Llama-style RMSNorm"):
        optim.registry()["kernelize"].apply(torch.nn.Sequential(torch.nn.Linear(2, 2)), ctx)


def test_run_stage_sdpa_kernelize_on_tiny(offline, tiny_workload):
    workload = tiny_workload
    plain = run_stage(stages.resolve("sdpa"), workload)
    m = run_stage(stages.resolve("sdpa+kernelize"), workload)
    note = m.notes["kernelize"]
    assert note.startswith("local: stagebench/hub_kernels/rmsnorm (HF_HUB_OFFLINE=1);")
    assert "RMSNorm 9/9" in note
    assert math.isfinite(m.loss_last) and m.loss_last < m.loss_first
    # Same weights, same data: the kernel changes nothing the loss can see.
    assert m.loss_first == pytest.approx(plain.loss_first, rel=1e-6)
    assert m.grad_norm_first == pytest.approx(plain.grad_norm_first, rel=1e-4)
    assert workload.min_steps <= m.measured_steps <= workload.max_steps
