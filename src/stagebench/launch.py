"""torchrun, with its record of failed ranks kept as JSON.

    python -m stagebench.launch REPORT TORCHRUN_ARGS...

runs `torch.distributed.run` exactly as the `torchrun` command does. When workers fail, torchrun's
own account of each failed rank (exit code, signal, when) is written to REPORT, so isolate.py can
name a rank that died without a word (a segfault, a SIGKILL) instead of parsing torchrun's log.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError


def failure_report(exc: ChildFailedError) -> dict[str, dict]:
    return {
        str(rank): {
            "exitcode": failure.exitcode,  # negative: the signal that killed it
            "timestamp": failure.timestamp,
        }
        for rank, failure in exc.failures.items()
    }


def main(argv: list[str]) -> int:
    report, torchrun_args = Path(argv[0]), argv[1:]
    try:
        torchrun.run(torchrun.parse_args(torchrun_args))
    except ChildFailedError as exc:
        report.write_text(json.dumps(failure_report(exc)))
        print(exc.format_msg(), file=sys.stderr)  # torchrun's own summary, into the stage log
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
