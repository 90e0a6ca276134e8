"""The first fields of every benchmark's JSON record: what ran, on which machine, when, and how busy the box was
when it started (timings from a busy box are upper bounds); the sentence its report opens with; and how a
result names an input file so that a reader can follow it."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def record_header(benchmark: str, argv: Sequence[str] | None, machine: str) -> dict[str, Any]:
    """Call at the start of a run: ``benchmark`` is the script's name under benchmarks/, ``argv`` its arguments
    (None: ``sys.argv[1:]``), ``machine`` how the result names the box (the CPU and its count are added)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return {
        "benchmark": benchmark,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{machine} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)",
        "load_avg_at_start": os.getloadavg()[0],
        "command": " ".join(["python", f"benchmarks/{benchmark}.py", *args]),
    }


def describe_run(record: dict[str, Any], *details: str) -> str:
    """How ``record`` (a ``record_header`` and more) was made, as its report says it: the command, the machine,
    the date and the load at the start, then ``details`` in the same parentheses."""
    inside = "; ".join([f"load average {record['load_avg_at_start']:.2f} at start", *details])
    return f"`{record['command']}` on the {record['machine']}, {record['date']} ({inside})"


def portable(path: str) -> str:
    """A path as a reader of the results can follow it: ``data:REL`` under the data home, or relative to the
    repository (``../shared/...``), else as it is."""
    from aligngemini.paths import home_dir

    p = Path(path).resolve()
    data = (home_dir() / "data").resolve()
    if p.is_relative_to(data):
        return f"data:{p.relative_to(data)}"
    return os.path.relpath(p, REPO) if p.is_relative_to(REPO.parent) else str(p)


def record_path(out: Path, suffix: str) -> Path:
    """``OUT`` with ``suffix`` appended to its whole name: ``wild_eval_x1.5`` -> ``wild_eval_x1.5.json``, where
    ``Path.with_suffix`` would replace the ``.5``."""
    return out.parent / f"{out.name}{suffix}"


def write_record(out: Path, record: dict[str, Any], markdown: str) -> None:
    """Write a run's record as ``OUT.json`` and its report as ``OUT.md`` (folders made as needed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    record_path(out, ".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    record_path(out, ".md").write_text(markdown, encoding="utf-8")
