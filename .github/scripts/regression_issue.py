"""Compose the body of the nightly regression issue.

Inputs are the two outputs of ``stagebench regressions``: the markdown table and the JSON
report. Each JSON regression names the benchmark and the commit range it appeared in
(``benchmark``, ``good``, ``bad``); that range becomes a ready-to-run bisect command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

MARKER = "<!-- stagebench-nightly-regression -->"
BISECT = "nox -s bisect --"
_KEYS = {
    "benchmark": ("benchmark", "name"),
    "good": ("good", "good_commit", "last_good"),
    "bad": ("bad", "bad_commit", "first_bad"),
}


def _field(entry: dict, key: str) -> str | None:
    for alias in _KEYS[key]:
        value = entry.get(alias)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _entries(report: object) -> list[dict]:
    if isinstance(report, dict):
        report = report.get("regressions", [])
    if not isinstance(report, list):
        return []
    return [entry for entry in report if isinstance(entry, dict)]


def bisect_commands(report: object) -> list[str]:
    """One ``nox -s bisect -- GOOD BAD BENCHMARK`` line per regression, deduplicated."""
    commands: list[str] = []
    for entry in _entries(report):
        values = [_field(entry, key) for key in ("good", "bad", "benchmark")]
        if any(v is None or "`" in v or "\n" in v for v in values):
            continue  # not safe or not complete enough to paste into a shell
        command = " ".join([BISECT, *(shlex.quote(v) for v in values if v is not None)])
        if command not in commands:
            commands.append(command)
    return commands


def issue_body(table: str, report: object, run_url: str | None = None) -> str:
    lines = [MARKER, ""]
    if run_url:
        lines += [f"Nightly run: {run_url}", ""]
    lines += ["## Regressions", "", table.strip() or "_(no table produced)_", "", "## Bisect", ""]
    commands = bisect_commands(report)
    if commands:
        lines += [
            "Run the `bisect` workflow with these inputs, or in the GPU image:",
            "",
            "```sh",
            *commands,
            "```",
        ]
    else:
        lines += [
            "The report named no commit range; pick one from the table and run:",
            "",
            "```sh",
            f"{BISECT} <good> <bad> <benchmark>",
            "```",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--markdown", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--run-url")
    args = parser.parse_args(argv)

    report: object = []
    if args.json and args.json.is_file():
        try:
            report = json.loads(args.json.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            print(f"ignoring unreadable JSON report: {exc}", file=sys.stderr)
    table = args.markdown.read_text(encoding="utf-8")
    sys.stdout.write(issue_body(table, report, args.run_url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
