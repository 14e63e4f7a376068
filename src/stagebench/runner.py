"""The timed training loop: one stage, one model, measured steps -> Metrics.

Read top-down: build the seeded model, let the stage's optimizations change it, run step 0 alone
(compile and autotune cost lands there), the remaining warm-up steps, then measured steps timed on
the device (CUDA events; perf_counter on a CPU) until the median is known well enough, then a few
steps under the profiler (profile.py) and one that counts the host syncs (host_syncs.py): where
the time goes, never in a timed step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from stagebench import distributed, flops, host_gc, host_syncs, optim, profile, stats
from stagebench.models import build_model, decoder_layers, load_config, parameter_count
from stagebench.optim import compile as compile_opt
from stagebench.results import SAMPLE_DECIMALS, DistributedMetrics, Metrics, Samples
from stagebench.stages import Stage
from stagebench.workload import Workload

GIB = 1024**3
SEED_WINDOW_STEPS = 10
# Synthetic batches are a small cycled pool: a dense model's cost does not depend on token values,
# and a pool it can memorize makes a falling loss proof that updates reach the weights.
DATA_POOL_BATCHES = 4
CHECK_EVERY_STEPS = 5  # how often the stopping rule looks at the times so far


class StageUnavailable(RuntimeError):
    """The stage cannot run on this machine; the message says why."""


class CudaTimer:
    """Per-step CUDA events; reading never waits on the step still in flight."""

    def __init__(self) -> None:
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def start(self) -> None:
        pair = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        pair[0].record()
        self.events.append(pair)

    def stop(self) -> None:
        self.events[-1][1].record()

    def times_ms(self, *, all_steps: bool = False) -> list[float]:
        done = self.events if all_steps else self.events[:-1]
        if done:
            done[-1][1].synchronize()
        return [start.elapsed_time(end) for start, end in done]


class HostTimer:
    """perf_counter around each step: exact on a CPU, where every op is synchronous."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        self.times.append(1000.0 * (time.perf_counter() - self._t0))

    def times_ms(self, *, all_steps: bool = False) -> list[float]:
        return list(self.times)


def synthetic_batches(
    vocab: int, workload: Workload, device: torch.device, count: int, rank: int = 0
):
    """Seeded random token ids, the same for every stage (pretraining-style, labels = inputs).
    Rank r draws from seed + r: rank 0 trains exactly what a single process trains."""
    gen = torch.Generator(device=device).manual_seed(workload.seed + rank)
    shape = (workload.batch_size, workload.seq_len)
    pool = [
        torch.randint(0, vocab, shape, generator=gen, device=device)
        for _ in range(min(count, DATA_POOL_BATCHES))
    ]
    return [pool[i % len(pool)] for i in range(count)]


def make_optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The seed's AdamW; states follow the parameter dtype (bf16 on GPU), as in the seed."""
    return torch.optim.AdamW(
        model.parameters(),
        lr=3e-4,
        betas=(0.9, 0.95),
        weight_decay=0.01,
        fused=device.type == "cuda",
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_stage(stage: Stage, workload: Workload) -> Metrics:
    """Measure one stage in this process (one rank of it under torchrun). Raises on failure;
    isolate.py classifies it."""
    rank = distributed.current() if workload.nproc else None
    if workload.nproc and rank is None:
        raise RuntimeError("nproc is set but this is not a torchrun worker: use stagebench --nproc")
    device = distributed.device_for(workload.device, rank)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StageUnavailable("needs CUDA")
    if rank and device.type == "cuda" and rank.local_rank >= torch.cuda.device_count():
        raise StageUnavailable(f"needs {workload.nproc} GPUs, {torch.cuda.device_count()} visible")
    reason = optim.unavailable_reason(stage, device)
    if reason:
        raise StageUnavailable(reason)
    if rank:
        distributed.start(device)
    metrics = _build_and_measure(stage, workload, device, rank)
    # Only after success: tearing NCCL down while a peer is stuck in a collective can block, and
    # a failed rank has a Result to write; its exit ends the process group anyway.
    distributed.stop()
    return metrics


def _build_and_measure(
    stage: Stage, workload: Workload, device: torch.device, rank: distributed.Rank | None
) -> Metrics:
    dtype = getattr(torch, workload.dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    model = build_model(
        workload.model, device=device, dtype=dtype, seed=workload.seed, attn_implementation="sdpa"
    )
    model.train()
    ctx = optim.StageContext(
        stage, device, dtype, compile_cache=workload.compile_cache, sharded=rank is not None
    )
    with ctx.cleanup:
        if stage.compiles:  # counts from this stage only, whatever ran before in this process
            compile_opt.reset_counters(ctx)
        for opt in optim.for_stage(stage):
            model = opt.apply(model, ctx)
        if rank:  # after the optimizations, as torchtitan orders it: shard what will run
            ctx.notes["fsdp"] = distributed.shard(model, decoder_layers(model), dtype)
        optimizer = make_optimizer(model, device)
        batches = synthetic_batches(
            model.config.vocab_size,
            workload,
            device,
            workload.warmup_steps + workload.max_steps + _profiled_steps(workload, rank),
            rank.rank if rank else 0,
        )
        _sync(device)
        model_init_s = time.perf_counter() - t0
        run = _timed_loop(model, optimizer, batches, workload, device, rank, ctx.call_kwargs)
        metrics = _metrics(model, run, ctx, workload, device)
        metrics.model_init_s = model_init_s
        metrics.samples = Samples(warmup_ms=run.warmup_ms, measured_ms=run.times_ms)
        metrics.profile = _profile_record(run, workload, rank, metrics.notes)
        if run.host_syncs is not None:
            metrics.notes["host_syncs"] = run.host_syncs
        if stage.compiles:
            metrics.compile = compile_opt.observed()
    return metrics


def _train_step(model, optimizer, batch, loss_fn: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    loss = loss_fn(model, batch, batch)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), distributed.full(grad_norm.detach())


@dataclass
class TimedRun:
    """The raw measurements, merged over ranks where there are several."""

    times_ms: list[float]  # per measured step; the slowest rank's time for that step
    warmup_ms: list[float]  # steps 1 .. warmup_steps - 1, the same way
    first_step_s: float
    loss_first: float  # mean over ranks
    loss_last: float
    grad_norm_first: float
    peak_allocated_gib: list[float] | None  # per rank
    peak_reserved_gib: list[float] | None
    alloc_retries: list[int] | None
    per_rank_median_ms: list[float] = field(default_factory=list)
    comm: list[tuple[distributed.CommTime, float] | None] = field(default_factory=list)  # per rank
    capture: profile.Capture | None = None  # this rank's profiled steps
    profile_note: str | None = None  # why there is no capture
    memory_gib: dict[str, float] = field(default_factory=dict)  # by category, this rank's
    host_syncs: str | None = None  # host_syncs.observe's note; None: not counted


def _profiled_steps(workload: Workload, rank) -> int:
    """Steps run under the profiler after the timed ones. Under torchrun the collectives' share
    of the step needs a profile even when the kernel record is off."""
    return workload.profile_steps or (distributed.PROFILE_STEPS if rank else 0)


def _rounded(times_ms: list[float]) -> list[float]:
    return [round(t, SAMPLE_DECIMALS) for t in times_ms]


def _timed_loop(
    model, optimizer, batches, workload: Workload, device, rank, call_kwargs: dict | None = None
) -> TimedRun:
    def loss_fn(model, input_ids, labels):
        return optim.training_loss(model, input_ids, labels, **(call_kwargs or {}))

    def step(batch):
        return _train_step(model, optimizer, batch, loss_fn)

    # Step 0 on its own: its wall time is the compile / autotune / first-use cost.
    t0 = time.perf_counter()
    loss0, grad_norm0 = step(batches[0])
    _sync(device)
    first_step_s = time.perf_counter() - t0
    loss_first, grad_norm_first = loss0.item(), grad_norm0.item()
    # Timed like the measured steps (events, no sync between steps), kept, never summarized.
    warm = CudaTimer() if device.type == "cuda" else HostTimer()
    for i in range(1, workload.warmup_steps):
        warm.start()
        step(batches[i])
        warm.stop()

    timer = CudaTimer() if device.type == "cuda" else HostTimer()
    loss = loss0
    measured = 0
    with host_gc.controlled(workload.host_gc):
        for i in range(workload.max_steps):
            timer.start()
            loss, _ = step(batches[workload.warmup_steps + i])
            timer.stop()
            measured = i + 1
            if measured >= workload.min_steps and measured % CHECK_EVERY_STEPS == 0:
                ci = stats.summarize(timer.times_ms()).ci95_half_width_pct if measured > 6 else None
                done = ci is not None and ci <= workload.target_ci_pct
                if rank:
                    done = distributed.rank0_decides(done, device)
                if done:
                    break
    # Rounded before anything is computed from them: the stored samples give back the stored
    # statistics exactly.
    times = _rounded(timer.times_ms(all_steps=True))
    warmup_ms = _rounded(warm.times_ms(all_steps=True))
    memory = _peak_memory(device)
    run = TimedRun(
        times, warmup_ms, first_step_s, loss_first, loss.item(), grad_norm_first, *memory
    )
    profiled = _profiled_steps(workload, rank)
    if profiled:
        if workload.profile_steps:
            run.memory_gib = _memory_by_category(model, optimizer, device)
        spare = iter(batches[workload.warmup_steps + measured :])
        run.capture, run.profile_note = _capture(lambda: step(next(spare)), profiled, device, rank)
    if workload.profile_steps and not rank:
        # One more untimed step, part of the profile's explanation. Not under torchrun: the
        # extra step's collectives would need every rank.
        t0 = time.perf_counter()
        run.host_syncs = host_syncs.observe(lambda: step(batches[0]), device)
        if run.capture is not None:  # the profile's cost_s counts it
            run.capture.elapsed_s += time.perf_counter() - t0
    if rank:
        _merge_ranks(run, device)
    return run


def _memory_by_category(model, optimizer, device) -> dict[str, float]:
    try:
        return profile.memory_by_category(model, optimizer, device)
    except Exception:  # a nicety of the profile record, never a reason to fail the stage
        return {}


def _capture(step, steps: int, device, rank) -> tuple[profile.Capture | None, str | None]:
    """The profiled steps; a profiler that fails leaves no capture and a reason, never a failed
    stage. Under torchrun a failing *step* still fails the rank: its peers wait in that step's
    collectives, and a rank that stops must exit non-zero."""
    try:
        return profile.capture(step, steps, device), None
    except profile.ProfilerFailed as exc:
        return None, str(exc)
    except Exception as exc:
        if rank:
            raise
        return None, f"a profiled step failed: {type(exc).__name__}: {exc}".splitlines()[0]


def _profile_record(run: TimedRun, workload: Workload, rank, notes: dict[str, str]):
    """The profile stored in the Result (rank 0's under torchrun), or None with the reason in
    the notes."""
    if not workload.profile_steps:
        notes["profile"] = "off (profile_steps=0)"
        return None
    if run.capture is None:
        notes["profile"] = f"failed: {run.profile_note}"
        return None
    try:
        record = profile.reduce(run.capture, run.memory_gib)
    except profile.ProfilerFailed as exc:
        notes["profile"] = f"failed: {exc}"
        return None
    except Exception as exc:
        notes["profile"] = f"failed: could not reduce the trace: {type(exc).__name__}: {exc}"
        return None
    if rank:
        record.source += f"; rank {rank.rank} of {rank.world_size}"
    return record


def _peak_memory(device) -> tuple[list[float], list[float], list[int]] | tuple[None, None, None]:
    """This rank's peak allocated and reserved GiB and allocator retries, as one-rank lists."""
    if device.type != "cuda":
        return None, None, None
    # cudaMalloc failures answered by freeing the cache and retrying: near the memory limit
    # they, not the kernels, set the step time
    retries = torch.cuda.memory_stats(device).get("num_alloc_retries", 0)
    return (
        [torch.cuda.max_memory_allocated(device) / GIB],
        [torch.cuda.max_memory_reserved(device) / GIB],
        [retries],
    )


def _merge_ranks(run: TimedRun, device) -> None:
    """The collectives' share from this rank's profile, then every rank's numbers merged."""
    comm = None
    if run.capture is not None:
        events = [(e.name, e.on_device, e.start_us, e.end_us) for e in run.capture.events]
        comm = (distributed.comm_time(events), run.capture.wall_ms)
    run.loss_first = distributed.mean(run.loss_first, device)
    run.loss_last = distributed.mean(run.loss_last, device)
    ranks = distributed.gather(
        (
            run.times_ms,
            run.peak_allocated_gib,
            run.peak_reserved_gib,
            run.alloc_retries,
            comm,
            run.warmup_ms,
        )
    )
    run.times_ms = [max(step_times) for step_times in zip(*(r[0] for r in ranks), strict=True)]
    run.warmup_ms = [max(step_times) for step_times in zip(*(r[5] for r in ranks), strict=True)]
    run.per_rank_median_ms = [stats.summarize(r[0]).median for r in ranks]
    if run.peak_allocated_gib is not None:  # each rank's one-rank lists, joined in rank order
        run.peak_allocated_gib = [v for r in ranks for v in r[1]]
        run.peak_reserved_gib = [v for r in ranks for v in r[2]]
        run.alloc_retries = [v for r in ranks for v in r[3]]
    run.comm = [r[4] for r in ranks]


def _metrics(model, run: TimedRun, ctx, workload: Workload, device) -> Metrics:
    summary = stats.summarize(run.times_ms)
    nproc = workload.nproc or 1
    tokens = workload.tokens_per_step  # all ranks together
    tokens_per_s = tokens / (summary.median / 1000.0)
    per_gpu = tokens_per_s / nproc  # FLOPs, TFLOPS and MFU are per GPU, as in the seed
    config = load_config(workload.model)
    n_params = parameter_count(config)
    fpt = flops.flops_per_token(config, workload.seq_len).training
    seed_fpt = flops.seed_flops_per_token(config, workload.seq_len, n_params)
    cuda = device.type == "cuda"
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = flops.peak_for(device_name, workload.dtype, workload.peak_tflops)
    achieved = flops.tflops(per_gpu, fpt)
    seed_tflops = flops.tflops(per_gpu, seed_fpt)
    best = stats.best_window_mean(run.times_ms, SEED_WINDOW_STEPS)
    seed_window_mfu = (
        None
        if best is None or not cuda
        else flops.mfu_pct(
            flops.tflops(tokens / nproc / (best / 1000.0), seed_fpt), flops.SEED_PEAK_TFLOPS
        )
    )
    return Metrics(
        measured_steps=summary.n,
        warmup_steps=workload.warmup_steps,
        step_time_ms_median=summary.median,
        step_time_ms_iqr=summary.iqr,
        step_time_ms_min=summary.minimum,
        step_time_ms_max=summary.maximum,
        step_time_ci95_pct=summary.ci95_half_width_pct,
        tokens_per_step=tokens,
        tokens_per_s=tokens_per_s,
        flops_per_token=fpt,
        tflops=achieved,
        mfu_pct=flops.mfu_pct(achieved, peak.tflops),
        mfu_reason=peak.source,
        seed_flops_per_token=seed_fpt,
        seed_tflops=seed_tflops,
        # The seed's 989 TFLOPS is an H100's peak: against a CPU it would mean nothing.
        seed_mfu_pct=flops.mfu_pct(seed_tflops, flops.SEED_PEAK_TFLOPS) if cuda else None,
        seed_peak_window_mfu_pct=seed_window_mfu,
        first_step_s=run.first_step_s,
        model_init_s=0.0,
        loss_first=run.loss_first,
        loss_last=run.loss_last,
        grad_norm_first=run.grad_norm_first,
        peak_allocated_gib=max(run.peak_allocated_gib) if run.peak_allocated_gib else None,
        peak_reserved_gib=max(run.peak_reserved_gib) if run.peak_reserved_gib else None,
        alloc_retries=max(run.alloc_retries) if run.alloc_retries else None,
        n_params=n_params,
        attention_impl=str(model.config._attn_implementation),
        notes={**ctx.notes, "loss_head": ctx.loss_head},
        distributed=_distributed_metrics(run, per_gpu, ctx, nproc) if workload.nproc else None,
    )


def _distributed_metrics(run: TimedRun, per_gpu: float, ctx, nproc: int) -> DistributedMetrics:
    if None in run.comm:  # a rank's profiler failed: the share is not known
        busy: list[float] = []
        exposed: list[float | None] = [None]
        source = f"no profile: {run.profile_note or 'the profiler failed on another rank'}"
    else:
        busy = [100.0 * c.busy_ms / wall for c, wall in run.comm]
        exposed = [
            None if c.exposed_ms is None else 100.0 * c.exposed_ms / wall for c, wall in run.comm
        ]
        steps = run.capture.steps if run.capture else distributed.PROFILE_STEPS
        source = f"{run.comm[0][0].source}, {steps} steps after the timed"
    return DistributedMetrics(
        nproc=nproc,
        backend=distributed.backend(),
        sharding=ctx.notes.get("fsdp", ""),
        tokens_per_s_per_gpu=per_gpu,
        step_time_ms_median_per_rank=run.per_rank_median_ms,
        peak_allocated_gib_per_rank=run.peak_allocated_gib,
        peak_reserved_gib_per_rank=run.peak_reserved_gib,
        comm_busy_pct=sum(busy) / len(busy) if busy else None,
        comm_exposed_pct=None if None in exposed else sum(exposed) / len(exposed),
        comm_source=source,
    )
