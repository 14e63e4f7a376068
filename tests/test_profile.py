"""The profile room: the kernel-name table, names people can read, the reduction of a trace to
the stored record (planted traces, exact arithmetic), a real CPU capture, and a profiler that
fails without failing anything else."""

from __future__ import annotations

import pytest

from stagebench import profile
from stagebench.profile import Capture, Event

# Real kernel (and, on a CPU, aten op) names, as torch.profiler, nsys or the libraries' sources
# spell them, per group.
REAL_NAMES = {
    "attention": [
        "flash_fwd_kernel",
        "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits"
        "<128, 64, 128, 8, 2, 4, 2, false, false, cutlass::bfloat16_t>, true, false, false, "
        "false, false, true, false>(pytorch_flash::Flash_bwd_params)",
        "cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x128_4x1x1_kernel0_0",
        "void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90<flash::"
        "CollectiveMainloopFwdSm90<2, cute::tuple<cute::C<1>, cute::C<1>, cute::C<1> >, "
        "cute::tuple<cute::C<128>, cute::C<176>, cute::C<128> >, 128, cutlass::bfloat16_t, float,"
        " cutlass::arch::Sm90, false> > > >(flash::FlashAttnFwdSm90<...>::Params)",
        "fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<"
        "cutlass::bfloat16_t, cutlass::arch::Sm80, true, 64, 64, 64, true, true>::Params)",
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
        "aten::_efficient_attention_backward",
        "void at::native::(anonymous namespace)::cunn_SoftMaxForward<8, c10::BFloat16, float, "
        "c10::BFloat16, at::native::(anonymous namespace)::SoftMaxForwardEpilogue>(c10::BFloat16*"
        ", c10::BFloat16 const*, int)",  # eager attention's softmax
    ],
    "matmul": [
        "ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_64x3_tn",
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1_execute_"
        "segment_k_off_kernel__5x_cublas",
        "nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NTT",
        "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_"
        "align8>(cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8::Params)",
        "triton_tem_fused_mm_10",
        "triton_tem_fused_clone_mm_8",  # a transpose prologue: still the matmul
        "triton_tem_fused_mm_relu_0",  # an activation epilogue: still the matmul
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
    ],
    "norm": [
        "_rms_norm_forward_kernel",
        "_rms_norm_backward_kernel",
        "triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0",
        "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_1",
        "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, "
        "float>(int, float, c10::BFloat16 const*, c10::BFloat16 const*, c10::BFloat16 const*, "
        "float*, float*, c10::BFloat16*)",
        "aten::rsqrt",
    ],
    "activation": [
        "_swiglu_forward_kernel",
        "_swiglu_backward_kernel",
        "triton_poi_fused_mul_silu_0",
        "void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::"
        "silu_kernel(at::TensorIteratorBase&)::{lambda()#1}::operator()() const::{lambda()#6}::"
        "operator()() const::{lambda(c10::BFloat16)#1}, std::array<char*, 2ul> >(int, "
        "at::native::(anonymous namespace)::silu_kernel)",
        "aten::silu",
        "aten::silu_backward",
        "aten::sigmoid",
        "aten::gelu",
    ],
    "rope": [
        "_triton_rope",
        "flashinfer::BatchQKApplyRotary",
        "triton_poi_fused_add_cat_mul_neg_slice_unsqueeze_2",  # rotate_half, fused by inductor
    ],
    "loss": [
        "liger_cross_entropy_kernel",
        "element_mul_kernel",  # Liger's FLCE scaling its gradient chunk
        "_cce_lse_forward_kernel",
        "_cce_backward_kernel",
        "_indexed_neg_dot_forward_kernel",
        "void at::native::<unnamed>::cunn_SoftMaxForward<(int)4, float, float, float, "
        "at::native::<unnamed>::LogSoftMaxForwardEpilogue>(T4 *, const T2 *, int)",
        "void nll_loss_forward_reduce_cuda_kernel_2d<float, float, long>(float*, float*, float "
        "const*, long const*, float const*, bool, long, long, long, long)",
        "aten::_log_softmax",
        "aten::nll_loss_backward",
        "aten::logsumexp",
    ],
    "optimizer": [
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous"
        " namespace)::FusedOptimizerTensorListMetadata<4>, at::native::(anonymous namespace)::"
        "FusedAdamMathFunctor<c10::BFloat16, 4, (at::native::ADAM_MODE)1, false>, double*, "
        "double, double, double, double, double, bool, float const*, float const*>(...)",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous"
        " namespace)::TensorListMetadata<1>, at::native::(anonymous namespace)::LpNormFunctor<"
        "c10::BFloat16, (at::native::NormType)1, float, float>, float*, int>(...)",  # clip_grad
        "void at::native::lpnorm_cleanup<c10::BFloat16, (at::native::NormType)1, float, float>"
        "(float const*, at::native::TensorListAddresses, int)",
        "aten::_fused_adamw_",
        "aten::_foreach_mul_",
        "aten::linalg_vector_norm",
        "Optimizer.step#AdamW.step",
    ],
    "copy/memset": [
        "Memcpy DtoD (Device -> Device)",
        "Memcpy HtoD (Pageable -> Device)",
        "Memset (Device)",
        "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::"
        "TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda()#7}::operator()() "
        "const::{lambda(float)#1}, std::array<char*, 2ul>, 4, TrivialOffsetCalculator<1, unsigned "
        "int>, char*>(int, ...)",
        "void at::native::vectorized_elementwise_kernel<16, at::native::FillFunctor<bool>, "
        "std::array<char*, 1ul> >(int, at::native::FillFunctor<bool>)",
        "void at::native::(anonymous namespace)::CatArrayBatchedCopy<at::native::(anonymous "
        "namespace)::OpaqueType<2u>, unsigned int, 4, 64, 64>(...)",
        "triton_poi_fused__to_copy_3",
        "aten::copy_",
        "aten::_to_copy",
        "aten::fill_",
        "aten::cat",
    ],
    "communication": [
        "ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
        "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
        "gloo:all_reduce",
        "c10d::allgather_",
    ],
    "elementwise": [
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::"
        "BFloat16>, std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<c10::BFloat16>, "
        "std::array<char*, 3ul>)",
        "void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::"
        "masked_fill_kernel(at::TensorIterator&, c10::Scalar const&)::{lambda()#1}::operator()() "
        "const::{lambda()#4}::operator()() const::{lambda(long, bool)#1}, std::array<char*, 3ul> "
        ">(int, ...)",
        "triton_poi_fused_add_1",
        "aten::mul",
        "aten::add_",
    ],
    "other": ["aten::embedding_dense_backward", "aten::view", "aten::empty_strided"],
}


@pytest.mark.parametrize(
    ("group", "name"), [(g, n) for g, names in REAL_NAMES.items() for n in names]
)
def test_real_kernel_names_fall_in_their_group(group, name):
    assert profile.group_of(name) == group


def test_every_group_of_the_table_is_exercised():
    assert set(REAL_NAMES) == set(profile.GROUP_NAMES)


@pytest.mark.parametrize(
    ("name", "short"),
    [
        ("flash_fwd_kernel", "flash_fwd_kernel"),
        ("Memcpy DtoD (Device -> Device)", "Memcpy DtoD"),
        (
            "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::"
            "(anonymous namespace)::TensorListMetadata<1>, at::native::(anonymous namespace)::"
            "LpNormFunctor<float, 1, float, float>, float*, int>(at::native::(anonymous "
            "namespace)::TensorListMetadata<1>, float*, int)",
            "multi_tensor_apply_kernel<TensorListMetadata<1>, LpNormFunctor<float, 1, float, "
            "float>, float*, int>",
        ),
        (
            "void at::native::<unnamed>::cunn_SoftMaxForward<(int)4, float, float, float, "
            "at::native::<unnamed>::LogSoftMaxForwardEpilogue>(T4 *, const T2 *, int)",
            "cunn_SoftMaxForward<(int)4, float, float, float, LogSoftMaxForwardEpilogue>",
        ),
        (
            "## Call CompiledFxGraph f5arbnrmfzrcbnnqccrdvonze7w5eiopooms5oihg5bibvne265y ##",
            "inductor: CompiledFxGraph (fused kernels, not recorded one by one)",
        ),
    ],
)
def test_short_names_drop_namespaces_arguments_and_hashes(name, short):
    assert profile.short_name(name) == short


def test_a_very_long_name_is_cut():
    name = "void k<" + "x" * 500 + ">(int)"
    short = profile.short_name(name)
    assert len(short) == profile.SHORT_NAME_CHARS and short.endswith("…")


def _gpu(name: str, start: float, end: float, stream: int = 7) -> Event:
    return Event(name, True, stream, start, end)


def test_a_gpu_trace_reduces_to_groups_kernels_and_the_host_gap():
    """Two steps of 1000 us each; kernels cover 0..700 and 1000..1700 except where they
    overlap (an NCCL kernel on its own stream): busy is the union, groups the sums."""
    events = []
    for base in (0.0, 1000.0):
        events += [
            _gpu("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NTT", base, base + 400),
            _gpu("flash_fwd_kernel", base + 400, base + 600),
            _gpu("ncclDevKernel_AllGather_RING_LL", base + 500, base + 700, stream=20),
            Event("aten::mm", False, 1, base, base + 900),  # host events are not device work
        ]
    record = profile.reduce(Capture(events, 2, 2.0, "cuda", 0.5), {"parameters": 1.5})
    assert record.source.startswith("cuda:")
    assert (record.wall_ms_per_step, record.busy_ms_per_step) == (1.0, 0.7)
    assert record.host_gap_ms_per_step == pytest.approx(0.3)
    assert {g: t.ms_per_step for g, t in record.groups.items()} == {
        "matmul": 0.4,
        "attention": 0.2,
        "communication": 0.2,
    }
    assert list(record.groups) == ["matmul", "attention", "communication"]  # largest first
    assert record.groups["matmul"].pct_of_busy == pytest.approx(100 * 0.4 / 0.7, abs=0.01)
    top = record.kernels[0]
    assert (top.name, top.group, top.calls_per_step, top.ms_per_step) == (
        "nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NTT",
        "matmul",
        1.0,
        0.4,
    )
    assert record.kernels_seen == 3 and record.rest_ms_per_step == 0
    assert record.memory_gib == {"parameters": 1.5}
    assert record.cost_s >= 0.5  # the capture's own cost, plus reducing it


def test_each_marked_step_gets_its_own_groups_so_a_slow_step_shows_where():
    """Two marked steps; the second's loss kernel is three times longer (a slow mode)."""
    events = []
    for i, (base, loss_us) in enumerate(((0.0, 100.0), (1000.0, 300.0))):
        events += [
            Event(f"{profile.STEP_MARK}{i}", False, 1, base, base + 900),
            _gpu("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NTT", base + 10, base + 410),
            _gpu("liger_cross_entropy_kernel", base + 410, base + 410 + loss_us),
        ]
    record = profile.reduce(Capture(events, 2, 2.0, "cuda", 0.0))
    fast, slow = record.per_step
    assert (fast.wall_ms, slow.wall_ms) == (0.9, 0.9)
    assert (fast.busy_ms, slow.busy_ms) == (0.5, 0.7)
    assert fast.groups == {"matmul": 0.4, "loss": 0.1}
    assert slow.groups == {"matmul": 0.4, "loss": 0.3}


def test_a_gpu_trace_without_kernels_is_a_failed_profile_not_an_idle_device():
    events = [Event("aten::mm", False, 1, 0.0, 900.0)]
    with pytest.raises(profile.ProfilerFailed, match="no kernel on the device"):
        profile.reduce(Capture(events, 1, 1.0, "cuda", 0.0))


def test_only_the_top_kernels_are_listed_and_the_rest_is_summed():
    events = [_gpu(f"kernel_{i}", 10.0 * i, 10.0 * i + i + 1) for i in range(10)]
    record = profile.reduce(Capture(events, 1, 1.0, "cuda", 0.0), top=3)
    assert [k.name for k in record.kernels] == ["kernel_9", "kernel_8", "kernel_7"]
    assert record.kernels_seen == 10
    listed = sum(k.ms_per_step for k in record.kernels)
    assert listed + record.rest_ms_per_step == pytest.approx(record.busy_ms_per_step)


def test_cpu_kernels_are_aten_self_times_and_the_optimizer_owns_its_ops():
    """On a CPU: nesting gives self time (linear -> mm), wrappers are host time, and a plain
    `aten::mul_` inside Optimizer.step is the optimizer's, outside it elementwise."""
    events = [
        Event("aten::linear", False, 1, 0.0, 100.0),
        Event("aten::t", False, 1, 1.0, 3.0),
        Event("aten::mm", False, 1, 5.0, 95.0),
        Event("autograd::engine::evaluate_function: MulBackward0", False, 1, 110.0, 140.0),
        Event("aten::mul_", False, 1, 115.0, 135.0),
        Event("Optimizer.step#AdamW.step", False, 1, 150.0, 200.0),
        Event("aten::mul_", False, 1, 160.0, 170.0),
        Event("aten::sqrt", False, 1, 175.0, 185.0),
        Event("gloo:all_reduce", False, 2, 0.0, 50.0),  # another thread: a collective
    ]
    record = profile.reduce(Capture(events, 1, 0.25, "cpu", 0.0))
    assert record.source.startswith("cpu: aten op self time")
    kernels = {(k.name, k.group): k.ms_per_step for k in record.kernels}
    assert kernels == {
        ("aten::mm", "matmul"): 0.09,
        ("aten::linear", "matmul"): 0.008,  # 100 - 2 - 90 us of its own
        ("aten::t", "other"): 0.002,
        ("aten::mul_", "elementwise"): 0.02,
        ("aten::mul_", "optimizer"): 0.01,
        ("aten::sqrt", "optimizer"): 0.01,
        ("gloo:all_reduce", "communication"): 0.05,
    }
    groups = {g: t.ms_per_step for g, t in record.groups.items()}
    assert sum(groups.values()) == pytest.approx(record.busy_ms_per_step)
    assert record.busy_ms_per_step == pytest.approx(0.19)
    assert record.host_gap_ms_per_step == pytest.approx(0.06)


class FakeProfilerThatCannotStart:
    """Stands in for torch.profiler.profile: start() fails the way a busy CUPTI does."""

    def __init__(self, **kwargs) -> None:
        pass

    def start(self) -> None:
        raise RuntimeError("CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED\nmore detail")


def test_a_profiler_that_cannot_start_still_runs_the_steps(monkeypatch):
    """Under torchrun every rank must take part in the steps' collectives, profiled or not."""
    import torch

    monkeypatch.setattr(torch.profiler, "profile", FakeProfilerThatCannotStart)
    ran = []
    with pytest.raises(profile.ProfilerFailed, match="did not start: RuntimeError: CUPTI_ERROR"):
        profile.capture(lambda: ran.append(1), 3, torch.device("cpu"))
    assert ran == [1, 1, 1]


def test_a_real_cpu_capture_of_a_few_matmuls():
    import torch

    x = torch.randn(64, 64)

    def step() -> None:
        torch.nn.functional.silu(x @ x).sum()

    cap = profile.capture(step, 2, torch.device("cpu"))
    assert cap.steps == 2 and cap.wall_ms > 0 and cap.elapsed_s > 0
    record = profile.reduce(cap)
    calls = {k.name: k.calls_per_step for k in record.kernels}
    assert calls["aten::mm"] == 1 and calls["aten::silu"] == 1
    assert {"matmul", "activation", "elementwise"} <= set(record.groups)
    groups = sum(g.ms_per_step for g in record.groups.values())
    assert groups == pytest.approx(record.busy_ms_per_step, abs=1e-3)
    assert len(record.per_step) == 2  # each step marked, its kernels its own
    for step_time in record.per_step:
        assert sum(step_time.groups.values()) == pytest.approx(step_time.busy_ms, abs=1e-3)
        assert step_time.busy_ms <= step_time.wall_ms


def test_memory_by_category_counts_weights_gradients_and_adam_state():
    import torch

    model = torch.nn.Linear(4096, 2048, bias=False)  # 32 MiB of float32 weights
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4096)).sum().backward()
    optimizer.step()
    memory = profile.memory_by_category(model, optimizer, torch.device("cpu"))
    weights = 4096 * 2048 * 4 / 1024**3
    assert memory["parameters"] == round(weights, 3)
    assert memory["gradients"] == round(weights, 3)
    assert set(memory) == {"parameters", "gradients", "optimizer_state"}  # no allocator on a CPU
    state_bytes = sum(
        v.numel() * v.element_size()
        for s in optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
    assert memory["optimizer_state"] == round(state_bytes / 1024**3, 3) > memory["parameters"]
