"""torchrun, with its record of failed ranks kept as JSON.

    python -m stagebench.launch REPORT TORCHRUN_ARGS...

runs `torch.distributed.run` exactly as the `torchrun` command does. When workers fail, torchrun's
own account of each failed rank (exit code, signal, when) is written to REPORT, so isolate.py can
name a rank that died without a word (a segfault, a SIGKILL) instead of parsing torchrun's log.

REPORT lies in the stage's temporary directory. Like a single stage's child, the launcher dies with
its parent (see isolate.die_with_parent); torchrun then stops its workers, and an orphaned
launcher also removes the directory.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from stagebench import isolate

if TYPE_CHECKING:  # torch is imported after asking to die with the parent
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
    tmp = report.parent
    isolate.die_with_parent(tmp, owns_tmp=True)  # before torch's import: that takes seconds
    parent = int(os.environ.get(isolate.PARENT_PID_ENV) or 0)
    os.environ[isolate.PARENT_PID_ENV] = str(os.getpid())  # the workers' parent is this process

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun.run(torchrun.parse_args(torchrun_args))
    except ChildFailedError as exc:
        report.write_text(json.dumps(failure_report(exc)))
        print(exc.format_msg(), file=sys.stderr)  # torchrun's own summary, into the stage log
        return 1
    finally:
        # torchrun's own SIGTERM handler replaced die_with_parent's: an orphan cleans up here.
        if parent and isolate.parent_gone(parent):
            isolate.kill_workers(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
