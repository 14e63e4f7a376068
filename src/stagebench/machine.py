"""Which machine a number was measured on: a stable asv machine name and the facts behind it.

asv files results under a machine name. A container's hostname is random, so naming the machine
after it starts a new, empty series every night and no alarm can ever fire. The name comes from
what defines the measurement instead:
    STAGEBENCH_ASV_MACHINE, when the runner gives one;
    else the GPUs: "nvidia-h100-80gb-hbm3-x1" (model and count);
    else the CPU: "cpu-<model>-x<cores>".
The facts behind it (GPU, count, driver, CPU, memory, the container image from STAGEBENCH_IMAGE)
are logged once per run beside asv's results (`stagebench-machines.jsonl`), so a change of
driver or image is reported next to the numbers it may have moved, and a new machine name is
reported as a new series, never silently.

`python -m stagebench.machine` prints the name; `register` also writes asv's machine file with
fields that do not drift (no kernel version). Standard library only, plus nvidia-ml-py when
there is a GPU.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

LOG_NAME = "stagebench-machines.jsonl"
# Facts whose change is worth a line in the nightly report (the hostname never is).
TRACKED = ("gpu", "gpu_count", "driver", "gpu_memory_gib", "cpu", "num_cpu", "ram_gib", "image")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _ram_gib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gpus() -> dict[str, Any]:
    """GPU model, count, driver and memory from NVML; empty where there is no GPU."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return {}
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return {}
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 1024**3
        return {
            "gpu": name.decode() if isinstance(name, bytes) else name,
            "gpu_count": count,
            "driver": pynvml.nvmlSystemGetDriverVersion(),
            "gpu_memory_gib": round(memory),
        }
    except pynvml.NVMLError:
        return {}
    finally:
        pynvml.nvmlShutdown()


def facts() -> dict[str, Any]:
    """What this machine is, for the name and the log."""
    return {
        **_gpus(),
        "cpu": _cpu_model(),
        "num_cpu": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "os": platform.system(),
        "arch": platform.machine(),
        "image": os.environ.get("STAGEBENCH_IMAGE") or None,
        "hostname": socket.gethostname(),  # informational only: containers make it up
    }


def name(info: dict[str, Any]) -> str:
    """The asv machine name (see the module docstring)."""
    given = os.environ.get("STAGEBENCH_ASV_MACHINE", "").strip()
    if given:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", given):
            raise ValueError(
                f"STAGEBENCH_ASV_MACHINE={given!r}: use letters, digits, '.', '_' and '-'"
            )
        return given
    if info.get("gpu"):
        return f"{_slug(info['gpu'])}-x{info['gpu_count']}"
    cpu = _slug(info["cpu"]).replace("-r-", "-").replace("-tm-", "-")
    return f"cpu-{cpu[:48].strip('-')}-x{info['num_cpu']}"


def changes(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every tracked fact that differs."""
    if previous is None:
        return []
    return [
        f"{key}: {previous.get(key)} -> {current.get(key)}"
        for key in TRACKED
        if previous.get(key) != current.get(key)
    ]


def read_log(results_dir: Path) -> list[dict[str, Any]]:
    """Every readable line of the machine log (a torn or foreign line is skipped)."""
    path = Path(results_dir) / LOG_NAME
    entries = []
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            entry = json.loads(line.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("machine"), str)
            and isinstance(entry.get("facts", {}), dict)
        ):
            entries.append(entry)
    return entries


def append_log(results_dir: Path, entry: dict[str, Any]) -> None:
    path = Path(results_dir) / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as log:
        data = path.read_bytes() if path.stat().st_size else b""
        prefix = b"" if not data or data.endswith(b"\n") else b"\n"
        log.write(prefix + json.dumps(entry, sort_keys=True).encode() + b"\n")
        log.flush()
        os.fsync(log.fileno())


def asv_machine_args(machine: str, info: dict[str, Any]) -> list[str]:
    """`asv machine` arguments that stay the same from run to run on one machine."""
    cpu = info["cpu"] if not info.get("gpu") else f"{info['cpu']} | {info['gpu']}"
    ram = f"{info['ram_gib']}GB" if info.get("ram_gib") else "unknown"
    return [
        "machine",
        "--yes",
        "--machine",
        machine,
        "--os",
        info["os"],
        "--arch",
        info["arch"],
        "--cpu",
        cpu,
        "--num_cpu",
        str(info["num_cpu"]),
        "--ram",
        ram,
    ]


def register(machine: str, info: dict[str, Any]) -> None:
    """Write asv's machine file (in $HOME) for `machine`, non-interactively."""
    asv = shutil.which("asv")
    command = [asv] if asv else [sys.executable, "-m", "asv"]
    subprocess.run([*command, *asv_machine_args(machine, info)], check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["register"], ["facts"]):
        print("usage: python -m stagebench.machine [register | facts]", file=sys.stderr)
        return 2
    info = facts()
    try:
        machine = name(info)
    except ValueError as exc:
        print(f"stagebench: error: {exc}", file=sys.stderr)
        return 2
    if args == ["facts"]:
        print(json.dumps({"machine": machine, **info}, indent=2, sort_keys=True))
        return 0
    if args == ["register"]:
        register(machine, info)
    print(machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
