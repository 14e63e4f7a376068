"""The workload a stage trains: model, shapes, steps, seed. Defaults are the seed's."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from stagebench.host_gc import MODES as HOST_GC_MODES

# Fields a stored Result may lack because it was written before they existed (schema 1: nproc;
# schemas 1 to 3: profile_steps; schemas 1 to 4: host_gc).
ADDED_LATER = ("nproc", "profile_steps", "host_gc")
_KINDS: dict[str, type] = {"str": str, "int": int, "float": float}
_ACCEPTED = {"str": "a string", "int": "an integer", "float": "a number"}


@dataclass(frozen=True)
class Workload:
    model: str  # preset name, checkpoint directory or hub id
    device: str = "cuda"  # "cuda" or "cpu"
    dtype: str = "bfloat16"
    batch_size: int = 1  # the seed's table: batch 1 x seq_len 2048
    seq_len: int = 2048
    warmup_steps: int = 3  # step 0 (timed on its own as first_step_s) + the rest, not measured
    min_steps: int = 10  # the seed's 10-step window needs at least 10
    max_steps: int = 60
    target_ci_pct: float = 0.5  # stop once the median's 95% CI half-width is this small
    seed: int = 0
    timeout_s: float = 1800.0  # the seed's 30 minutes a config
    peak_tflops: float | None = None  # overrides the device table
    compile_cache: str | None = None  # inductor cache directory; None: the user cache
    nproc: int | None = None  # processes under torchrun, sharded with FSDP2; None: one, unsharded
    profile_steps: int = 3  # profiled after the timed steps (where the time goes); 0: none
    host_gc: str = "default"  # Python's collector in the measured steps (host_gc.py)

    def __post_init__(self) -> None:
        self._check_types()
        checks = (
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("seq_len", self.seq_len >= 2, "at least 2"),
            ("warmup_steps", self.warmup_steps >= 1, "at least 1 (step 0 is always warm-up)"),
            ("min_steps", self.min_steps >= 1, "at least 1"),
            ("max_steps", self.max_steps >= self.min_steps, f"at least min_steps={self.min_steps}"),
            ("target_ci_pct", self.target_ci_pct > 0, "above 0"),
            ("timeout_s", self.timeout_s > 0, "above 0"),
            (
                "dtype",
                self.dtype in ("bfloat16", "float16", "float32"),
                "bfloat16, float16 or float32",
            ),
            ("device", self.device in ("cuda", "cpu"), "cuda or cpu"),
            ("peak_tflops", self.peak_tflops is None or self.peak_tflops > 0, "above 0"),
            ("nproc", self.nproc is None or self.nproc >= 1, "at least 1"),
            ("profile_steps", self.profile_steps >= 0, "0 (off) or more"),
            ("host_gc", self.host_gc in HOST_GC_MODES, " or ".join(HOST_GC_MODES)),
        )
        for name, ok, accepted in checks:
            if not ok:
                raise ValueError(f"invalid {name}={getattr(self, name)!r}: must be {accepted}")

    def _check_types(self) -> None:
        """JSON (a stored Result, STAGEBENCH_WORKLOAD) can hold anything: "64", 64.5, true."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kinds = str(f.type).split(" | ")
            if value is None and "None" in kinds:
                continue
            if "float" in kinds and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))  # JSON writes 600.0 as 600
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"invalid {f.name}={value!r}: must be a finite number")
            kind = _KINDS[kinds[0]]
            if not isinstance(value, kind) or isinstance(value, bool):
                accepted = _ACCEPTED[kinds[0]] + (" or null" if "None" in kinds else "")
                raise ValueError(f"invalid {f.name}={value!r}: must be {accepted}")

    @property
    def tokens_per_step(self) -> int:
        """All ranks together: each rank trains its own batch of batch_size x seq_len."""
        return self.batch_size * self.seq_len * (self.nproc or 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, complete: bool = False) -> Workload:
        """A workload from JSON, every key and value checked (ValueError names the problem).

        complete: every field must be there (a stored Result's), except those added later.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a workload is a JSON object of fields, not {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(
                f"unknown workload field(s) {', '.join(map(repr, unknown))}; "
                f"valid: {', '.join(names)}"
            )
        required = [n for n in names if n not in ADDED_LATER] if complete else ["model"]
        missing = [n for n in required if n not in data]
        if missing:
            raise ValueError(f"workload lacks {', '.join(missing)}")
        return cls(**data)

    def numerics_key(self) -> str:
        """Identifies runs whose step-0 losses must agree: same weights, same data."""
        keep = ("model", "device", "dtype", "batch_size", "seq_len", "seed")
        key = {k: getattr(self, k) for k in keep}
        if self.nproc is not None:  # the logged loss is the mean over ranks' different batches
            key["nproc"] = self.nproc
        blob = json.dumps(key, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Named shapes. b1x2048 is the seed's table (the CUDA default); b2x1024 is what stagebench's
# history measured up to protocol 1 (the same tokens per step, half the attention per token).
WORKLOADS: dict[str, dict[str, int]] = {
    "b1x2048": {"batch_size": 1, "seq_len": 2048},
    "b2x1024": {"batch_size": 2, "seq_len": 1024},
}


def named(name: str) -> dict[str, int]:
    """A named workload's fields; ValueError names the valid ones."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; valid: {', '.join(WORKLOADS)}")
    return dict(WORKLOADS[name])


def shape_name(workload: Workload) -> str:
    """b<batch>x<seq_len>: the same whether a name or explicit fields set the shape."""
    return f"b{workload.batch_size}x{workload.seq_len}"


def defaults_for(device: str) -> dict[str, Any]:
    """Per-device defaults: the seed's workload on a GPU, a quick fp32 one on a CPU."""
    if device == "cuda":
        return {"dtype": "bfloat16", "timeout_s": 1800.0, **WORKLOADS["b1x2048"]}
    return {
        "dtype": "float32",
        "min_steps": 5,
        "max_steps": 20,
        "timeout_s": 600.0,
        **WORKLOADS["b2x1024"],
    }
