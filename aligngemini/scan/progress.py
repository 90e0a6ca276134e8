"""A scan's progress: a bar with images/s and ETA on a terminal, one line every ``every`` seconds in a log,
nothing when quiet; and the tallies the final summary reports."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

from aligngemini.scan.report import error_reason

Record = dict[str, Any]


@dataclass
class Tally:
    """What one run did."""

    inputs: int = 0
    scored: int = 0
    duplicates: int = 0
    fakes: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, rec: Record) -> None:
        self.inputs += 1
        if rec.get("duplicate_of"):
            self.duplicates += 1
        elif rec.get("error") is None:
            self.scored += 1
        if rec.get("error") is not None:
            self.errors[error_reason(rec["error"])] += 1
        elif rec.get("verdict") == "fake":
            self.fakes += 1

    def line(self, seconds: float) -> str:
        rate = self.inputs / seconds if seconds > 0 else 0.0
        errs = sum(self.errors.values())
        by = "; ".join(f"{why}: {n}" for why, n in self.errors.most_common(5))
        return (f"{self.inputs} inputs in {seconds:.1f} s ({rate:.1f}/s): {self.scored} scored, "
                f"{self.duplicates} duplicates, {errs} errors{f' ({by})' if by else ''}, {self.fakes} fake")  # fmt: skip


class Progress:
    def __init__(self, total: int, *, quiet: bool, every: float = 30.0, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.total = total
        self.every = every
        self.quiet = quiet
        self.t0 = self.last = time.monotonic()
        self.done = 0
        self.bar = None
        if not quiet and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", file=self.stream, desc="scan", dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if not self.quiet and now - self.last >= self.every:
            self.last = now
            rate = self.done / (now - self.t0)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            print(
                f"scan: {self.done}/{self.total} ({rate:.1f} img/s, ETA {_hms(eta)})",
                file=self.stream,
                flush=True,
            )

    def close(self) -> float:
        if self.bar is not None:
            self.bar.close()
        return time.monotonic() - self.t0


def _hms(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
