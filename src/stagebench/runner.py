"""The timed training loop: one stage, one model, measured steps -> Metrics.

Read top-down: build the seeded model, let the stage's optimizations change it, run step 0 alone
(compile and autotune cost lands there), the remaining warm-up steps, then measured steps timed on
the device (CUDA events; perf_counter on a CPU) until the median is known well enough.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from stagebench import flops, optim, stats
from stagebench.models import build_model, load_config, parameter_count
from stagebench.results import Metrics
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


def synthetic_batches(vocab: int, workload: Workload, device: torch.device, count: int):
    """Seeded random token ids, the same for every stage (pretraining-style, labels = inputs)."""
    gen = torch.Generator(device=device).manual_seed(workload.seed)
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
    """Measure one stage in this process. Raises on failure; isolate.py classifies it."""
    device = torch.device(workload.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StageUnavailable("needs CUDA")
    reason = optim.unavailable_reason(stage, device)
    if reason:
        raise StageUnavailable(reason)
    dtype = getattr(torch, workload.dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    t0 = time.perf_counter()
    model = build_model(
        workload.model, device=device, dtype=dtype, seed=workload.seed, attn_implementation="sdpa"
    )
    model.train()
    ctx = optim.StageContext(stage, device, dtype, compile_cache=workload.compile_cache)
    with ctx.cleanup:
        for opt in optim.for_stage(stage):
            model = opt.apply(model, ctx)
        optimizer = make_optimizer(model, device)
        batches = synthetic_batches(
            model.config.vocab_size, workload, device, workload.warmup_steps + workload.max_steps
        )
        _sync(device)
        model_init_s = time.perf_counter() - t0
        metrics = _timed_loop(model, optimizer, batches, ctx, workload, device)
        metrics.model_init_s = model_init_s
    return metrics


def _train_step(model, optimizer, batch, loss_fn: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    loss = loss_fn(model, batch, batch)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm.detach()


def _timed_loop(model, optimizer, batches, ctx, workload: Workload, device) -> Metrics:
    # Step 0 on its own: its wall time is the compile / autotune / first-use cost.
    t0 = time.perf_counter()
    loss0, grad_norm0 = _train_step(model, optimizer, batches[0], ctx.loss_fn)
    _sync(device)
    first_step_s = time.perf_counter() - t0
    loss_first, grad_norm_first = loss0.item(), grad_norm0.item()
    for i in range(1, workload.warmup_steps):
        _train_step(model, optimizer, batches[i], ctx.loss_fn)

    timer = CudaTimer() if device.type == "cuda" else HostTimer()
    loss = loss0
    for i in range(workload.max_steps):
        timer.start()
        loss, _ = _train_step(model, optimizer, batches[workload.warmup_steps + i], ctx.loss_fn)
        timer.stop()
        steps = i + 1
        if steps >= workload.min_steps and steps % CHECK_EVERY_STEPS == 0:
            ci = stats.summarize(timer.times_ms()).ci95_half_width_pct if steps > 6 else None
            if ci is not None and ci <= workload.target_ci_pct:
                break
    times = timer.times_ms(all_steps=True)
    return _metrics(
        model, times, first_step_s, loss_first, loss.item(), grad_norm_first, ctx, workload, device
    )


def _metrics(
    model,
    times,
    first_step_s,
    loss_first,
    loss_last,
    grad_norm_first,
    ctx,
    workload: Workload,
    device,
) -> Metrics:
    summary = stats.summarize(times)
    tokens = workload.tokens_per_step
    tokens_per_s = tokens / (summary.median / 1000.0)
    config = load_config(workload.model)
    n_params = parameter_count(config)
    fpt = flops.flops_per_token(config, workload.seq_len).training
    seed_fpt = flops.seed_flops_per_token(config, workload.seq_len, n_params)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = flops.peak_for(device_name, workload.dtype, workload.peak_tflops)
    achieved = flops.tflops(tokens_per_s, fpt)
    seed_tflops = flops.tflops(tokens_per_s, seed_fpt)
    best = stats.best_window_mean(times, SEED_WINDOW_STEPS)
    cuda = device.type == "cuda"
    seed_window_mfu = (
        None
        if best is None or not cuda
        else flops.mfu_pct(flops.tflops(tokens / (best / 1000.0), seed_fpt), flops.SEED_PEAK_TFLOPS)
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
        first_step_s=first_step_s,
        model_init_s=0.0,
        loss_first=loss_first,
        loss_last=loss_last,
        grad_norm_first=grad_norm_first,
        peak_allocated_gib=torch.cuda.max_memory_allocated(device) / GIB if cuda else None,
        peak_reserved_gib=torch.cuda.max_memory_reserved(device) / GIB if cuda else None,
        n_params=n_params,
        attention_impl=str(model.config._attn_implementation),
        notes={**ctx.notes, "loss_head": ctx.loss_head},
    )
