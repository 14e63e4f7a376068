"""Where a stage's time goes: a kernel-level profile of a few steps after the timed ones.

torch.profiler records `Workload.profile_steps` more training steps once the measured steps
are done, so it never touches a timed step. The trace is reduced to a compact record
(results.ProfileMetrics): wall, device-busy and host-gap time per step, time per group of
kernels (attention, matmul, norm, ...) and the largest kernels by name. On a GPU a "kernel" is
what ran on the device timeline (kernels, memcpys, memsets); on a CPU, where there is no device
timeline, it is an aten op's self time (the time inside it not spent in the ops it called), and
the record's `source` says which. Grouping is by name, from one table (GROUPS): first match wins.

The raw events come from the profiler's own result list, not from `prof.events()`: building
FunctionEvent trees costs about 100x more (0.6 s for 3 CPU steps of `tiny`), and that cost is
what a profile adds to the stage.

Standard library only at import: the classification table is tested (and can be read) without
torch.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from stagebench.results import GroupTime, KernelTime, ProfileMetrics, StepTime

TOP_KERNELS = 40
GIB = 1024**3
MS_DECIMALS = 4
SHORT_NAME_CHARS = 120
DEVICE_WORK = ("kernel", "gpu_memcpy", "gpu_memset")  # the profiler's activity types
STEP_MARK = "stagebench.profiled_step#"

# (group, pattern), first match wins, case-insensitive. Order matters where names share words:
# loss and rope before attention (LogSoftMax vs the attention softmax; flashinfer's rotary
# kernels), optimizer before norm (the grad norm of clipping), matmul before the rest (a triton
# mm template with a fused epilogue), norm before copy (inductor names list every op it fused:
# `..._to_copy_add_mean_mul_pow_rsqrt`). Eager attention's softmax is attention; its matmuls
# (bmm) are matmul. On a CPU the optimizer group also takes every op run inside its step.
GROUPS: tuple[tuple[str, str], ...] = (
    ("communication", r"nccl|gloo|c10d::|c10d_functional|all_?reduce|reduce_?scatter|all_?gather"
                      r"|all_?to_?all"),
    ("loss", r"cross_?entropy|nll_?loss|log_?softmax|logsumexp|(^|[_:])cce_|indexed_neg_dot"
             r"|^element_mul_kernel$"),  # Liger's FLCE scales its gradient with element_mul
    ("rope", r"rotary|(^|[_:])rope|fused\w*(cat\w*neg|neg\w*cat)"),
    ("attention", r"flash|fmha|sdpa|scaled_dot_product|_efficient_attention|attention|attn"
                  r"|softmax"),
    ("optimizer", r"^optimizer\.|adam|multi_tensor_apply|_foreach_|lpnorm|linalg_vector_norm"
                  r"|NormTwoOps|clip_grad"),
    ("matmul", r"gemm|cutlass|cublas|nvjet|xmma|wgmma|splitKreduce|triton_tem_fused_\w*mm"
               r"|^aten::(mm|addmm|bmm|baddbmm|matmul|linear)$"),
    ("norm", r"rms_?norm|layer_?norm|group_?norm|rsqrt|_norm_(fwd|bwd|forward|backward)"
             r"|fused\w*(mean\w*pow|pow\w*mean)"),
    ("activation", r"silu|swiglu|swish|gelu|geglu|sigmoid|relu|act_and_mul|tanh"),
    ("copy/memset", r"memcpy|memset|copy|FillFunctor|(^|[_:])cat($|_)|CatArrayBatched"
                    r"|^aten::(fill_|zero_|zeros|clone|contiguous|to)$"),
    ("elementwise", r"elementwise|triton_(poi|per|red)_|reduce_kernel"
                    r"|^aten::(add|sub|mul|div|neg|pow|exp|log|sqrt|abs|sum|mean|where|clamp"
                    r"|maximum|minimum|sin|cos)_?$"),
)  # fmt: skip
GROUP_NAMES = (*(g for g, _ in GROUPS), "other")
_COMPILED = tuple((g, re.compile(p, re.IGNORECASE)) for g, p in GROUPS)
# On a CPU, what counts as a kernel: aten ops, inductor's compiled graphs (their fused C++
# kernels are not recorded one by one) and collectives. Everything else (autograd's and the
# optimizer's wrappers, Python) is host time between kernels.
_CPU_KERNEL = re.compile(r"^aten::|CompiledFxGraph|^gloo:|^c10d::")
_OPTIMIZER_SCOPE = ("Optimizer.step#", "Optimizer.zero_grad#")


def group_of(name: str) -> str:
    """A kernel's (or, on a CPU, an aten op's) group by its name: first matching rule wins."""
    return next((group for group, pattern in _COMPILED if pattern.search(name)), "other")


def short_name(name: str) -> str:
    """A kernel name people can read: no `void`, no namespaces, no argument list; compiled
    graphs without their hash; at most SHORT_NAME_CHARS characters."""
    if "CompiledFxGraph" in name:
        return "inductor: CompiledFxGraph (fused kernels, not recorded one by one)"
    name = name.removeprefix("void ")
    name = name.replace("(anonymous namespace)::", "").replace("<unnamed>::", "")
    name = re.sub(r"\b(at::native::|at::cuda::|at::|c10::|std::)", "", name)
    depth = 0
    for i, char in enumerate(name):  # cut the argument list: the first `(` outside templates
        if char == "<":
            depth += 1
        elif char == ">":
            depth = max(0, depth - 1)
        elif char == "(" and depth == 0 and i > 0:
            name = name[:i].rstrip()
            break
    return name if len(name) <= SHORT_NAME_CHARS else name[: SHORT_NAME_CHARS - 1] + "…"


class Event(NamedTuple):
    name: str
    on_device: bool
    thread: int  # host thread, or the device's stream
    start_us: float
    end_us: float


@dataclass
class Capture:
    """The raw trace of the profiled steps."""

    events: list[Event]
    steps: int
    wall_ms: float  # the profiled steps, synchronised at both ends
    device: str  # cuda or cpu
    elapsed_s: float  # everything profiling cost: start, steps, stop, reading the events


class ProfilerFailed(RuntimeError):
    """The profiler itself failed (not the training step); the stage is still measured."""


def capture(step: Callable[[], Any], steps: int, device: Any) -> Capture:
    """Run `step` `steps` times under torch.profiler. The steps always run, even when the
    profiler cannot start: under torchrun every rank must take part in the same collectives."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    try:
        prof = profile(activities=activities)
        prof.start()
    except Exception as exc:
        for _ in range(steps):
            step()
        raise ProfilerFailed(f"the profiler did not start: {_line(exc)}") from exc
    try:
        _sync(torch, device)
        start = time.perf_counter()
        for i in range(steps):
            # Each step marked and synchronised at its end: its device work lies inside its
            # mark, so fast and slow steps can be compared group by group.
            with torch.profiler.record_function(f"{STEP_MARK}{i}"):
                step()
                _sync(torch, device)
        wall_ms = 1000.0 * (time.perf_counter() - start)
    except BaseException:
        with contextlib.suppress(Exception):
            prof.stop()
        raise
    try:
        prof.stop()
        events = _events(prof, torch)
    except Exception as exc:
        raise ProfilerFailed(f"the profiler failed: {_line(exc)}") from exc
    return Capture(events, steps, wall_ms, device.type, time.perf_counter() - t0)


def _sync(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _events(prof: Any, torch: Any) -> list[Event]:
    """The profiler's raw events; the FunctionEvent list only where the raw one is missing."""
    cpu = torch.autograd.DeviceType.CPU
    raw = getattr(getattr(prof, "profiler", None), "kineto_results", None)
    if raw is None:
        return [
            Event(e.name, e.device_type != cpu, int(e.thread), e.time_range.start, e.time_range.end)
            for e in prof.events()
        ]
    events = []
    for e in raw.events():
        on_device = e.device_type() != cpu
        # Only work on the device timeline: not the record_function spans mirrored there, nor
        # syncs (a wait is not work).
        if on_device and not _device_work(e):
            continue
        start = e.start_ns() / 1000.0
        thread = e.device_resource_id() if on_device else e.start_thread_id()
        events.append(Event(e.name(), on_device, int(thread), start, start + e.duration_ns() / 1e3))
    return events


def _device_work(event: Any) -> bool:
    kind = event.activity_type() if hasattr(event, "activity_type") else None
    return kind in DEVICE_WORK if kind else not event.is_user_annotation()


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, t in sorted(intervals):
        if s > end:
            total += t - s
            end = t
        elif t > end:
            total += t - end
            end = t
    return total


def _cpu_kernels(events: list[Event]) -> list[tuple[str, str, float]]:
    """(name, group, self us) of every CPU kernel: each thread's events nest, so an op's self
    time is its time minus its direct children's. Ops inside the optimizer's step are the
    optimizer's, whatever they are called (on a CPU AdamW is a loop of plain aten ops)."""
    out = []
    by_thread: dict[int, list[Event]] = {}
    for e in events:
        if not e.on_device:
            by_thread.setdefault(e.thread, []).append(e)
    for thread_events in by_thread.values():
        stack: list[list[Any]] = []  # [event, children us, in optimizer]
        done: list[list[Any]] = []
        for e in sorted(thread_events, key=lambda e: (e.start_us, -e.end_us)):
            while stack and stack[-1][0].end_us <= e.start_us:
                done.append(stack.pop())
            parent = stack[-1] if stack and e.end_us <= stack[-1][0].end_us else None
            if parent is not None:
                parent[1] += e.end_us - e.start_us
            in_optimizer = e.name.startswith(_OPTIMIZER_SCOPE) or bool(parent and parent[2])
            stack.append([e, 0.0, in_optimizer])
        done.extend(stack)
        for e, children, in_optimizer in done:
            if _CPU_KERNEL.search(e.name):
                self_us = max(0.0, e.end_us - e.start_us - children)
                group = "optimizer" if in_optimizer else group_of(e.name)
                out.append((short_name(e.name), group, self_us))
    return out


def reduce(
    cap: Capture, memory_gib: dict[str, float] | None = None, top: int = TOP_KERNELS
) -> ProfileMetrics:
    """The compact record stored in the Result; ProfilerFailed where the trace holds no work."""
    t0 = time.perf_counter()
    steps = cap.steps
    if cap.device == "cuda":
        device_events = [e for e in cap.events if e.on_device]
        if not device_events:  # CUPTI unavailable or taken: an empty record would read as idle
            raise ProfilerFailed("the profiler recorded no kernel on the device")
        kernels = [
            (short_name(e.name), group_of(e.name), e.end_us - e.start_us) for e in device_events
        ]
        busy_us = _union([(e.start_us, e.end_us) for e in device_events])
        source = "cuda: kernels, memcpys and memsets on the device timeline (torch.profiler)"
    else:
        kernels = _cpu_kernels(cap.events)
        busy_us = sum(us for _, _, us in kernels)
        source = "cpu: aten op self time, no device timeline (torch.profiler)"
    per_kernel: dict[tuple[str, str], list[float]] = {}
    per_group: dict[str, float] = {}
    for name, group, us in kernels:
        entry = per_kernel.setdefault((name, group), [0, 0.0])
        entry[0] += 1
        entry[1] += us
        per_group[group] = per_group.get(group, 0.0) + us
    busy_ms = busy_us / 1e3 / steps
    wall_ms = cap.wall_ms / steps

    def ms(us: float) -> float:
        return round(us / 1e3 / steps, MS_DECIMALS)

    ranked = sorted(per_kernel.items(), key=lambda item: -item[1][1])
    listed = [
        KernelTime(name, group, round(calls / steps, 2), ms(us))
        for (name, group), (calls, us) in ranked[:top]
    ]
    rest_us = sum(us for _, (_, us) in ranked[top:])
    groups = {
        group: GroupTime(ms(us), round(100.0 * us / 1e3 / steps / busy_ms, 2) if busy_ms else 0.0)
        for group, us in sorted(per_group.items(), key=lambda item: -item[1])
    }
    return ProfileMetrics(
        per_step=_per_step(cap),
        source=source,
        steps=steps,
        wall_ms_per_step=round(wall_ms, MS_DECIMALS),
        busy_ms_per_step=round(busy_ms, MS_DECIMALS),
        host_gap_ms_per_step=round(max(0.0, wall_ms - busy_ms), MS_DECIMALS),
        groups=groups,
        kernels=listed,
        kernels_seen=len(per_kernel),
        rest_ms_per_step=ms(rest_us),
        memory_gib=dict(memory_gib or {}),
        cost_s=round(cap.elapsed_s + time.perf_counter() - t0, 3),
    )


def _per_step(cap: Capture) -> list[StepTime]:
    """Each marked step: the device work (GPU) or CPU kernels that started inside its mark."""
    marks = sorted(
        (e for e in cap.events if not e.on_device and e.name.startswith(STEP_MARK)),
        key=lambda e: e.start_us,
    )
    out = []
    for mark in marks:
        inside = [e for e in cap.events if mark.start_us <= e.start_us < mark.end_us]
        if cap.device == "cuda":
            work = [e for e in inside if e.on_device]
            kernels = [(e.name, group_of(e.name), e.end_us - e.start_us) for e in work]
            busy_us = _union([(e.start_us, e.end_us) for e in work])
        else:
            kernels = _cpu_kernels([e for e in inside if e is not mark])
            busy_us = sum(us for _, _, us in kernels)
        groups: dict[str, float] = {}
        for _, group, us in kernels:
            groups[group] = groups.get(group, 0.0) + us / 1e3
        out.append(
            StepTime(
                wall_ms=round((mark.end_us - mark.start_us) / 1e3, MS_DECIMALS),
                busy_ms=round(busy_us / 1e3, MS_DECIMALS),
                groups={g: round(ms, MS_DECIMALS) for g, ms in groups.items()},
            )
        )
    return out


def memory_by_category(model: Any, optimizer: Any, device: Any) -> dict[str, float]:
    """Memory by what holds it, in GiB, from sizes and the allocator's counters only (nothing
    is traced, so it costs nothing): weights, gradients (one per trainable weight, as after a
    backward), optimizer state; on CUDA the allocator's peaks over the run (allocated, reserved,
    inactive split blocks: fragmentation) and the part of the allocated peak beyond weights and
    optimizer state (activations, the gradients alive then, temporaries, workspaces)."""
    import torch

    def size(tensor: Any) -> int:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # FSDP2: this shard
        return local.numel() * local.element_size()

    params = list(model.parameters())
    out = {
        "parameters": sum(size(p) for p in params),
        "gradients": sum(size(p) for p in params if p.requires_grad),
        "optimizer_state": sum(
            size(value)
            for state in optimizer.state.values()
            for value in state.values()
            if isinstance(value, torch.Tensor)
        ),
    }
    if device.type == "cuda":
        stats = torch.cuda.memory_stats(device)
        out["peak_allocated"] = stats.get("allocated_bytes.all.peak", 0)
        out["peak_reserved"] = stats.get("reserved_bytes.all.peak", 0)
        out["peak_inactive_split"] = stats.get("inactive_split_bytes.all.peak", 0)
        held = out["parameters"] + out["optimizer_state"]
        out["peak_beyond_weights_and_state"] = max(0, out["peak_allocated"] - held)
    return {key: round(value / GIB, 3) for key, value in out.items()}
