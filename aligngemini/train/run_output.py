"""Read back what ``aligngemini train`` leaves in its output folder: the summary and the exported branch.

``assemble`` and the benchmarks that score trained runs all need the same three things (the exported branch
section, the folder its files sit in, and the recipe the run was trained with); this is the one place that
reads them and says clearly what is wrong when a folder is not a finished run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUMMARY_NAME = "train_summary.json"
BRANCH_DIR = "branch"
RESUME_HINT = "continue it with 'aligngemini train RECIPE --output FOLDER --resume'"


class RunOutputError(ValueError):
    """A folder that is not a finished ``aligngemini train`` output; the message names the file and the fix."""


@dataclass(frozen=True)
class TrainedRun:
    dir: Path
    summary: dict[str, Any]

    @property
    def section(self) -> dict[str, Any]:
        """The exported branch section (a bundle's ``branches.<role>``), as the trainer wrote it."""
        return self.summary["export"]

    @property
    def branch_dir(self) -> Path:
        """The folder the section's file names are relative to."""
        return self.dir / BRANCH_DIR

    @property
    def recipe(self) -> dict[str, Any]:
        """The recipe the run was trained with, overrides applied; empty when the summary predates it."""
        return self.summary.get("recipe") or {}


def read_run(run: str | Path) -> TrainedRun:
    """The finished run in ``run``; :class:`RunOutputError` when its summary is missing, unreadable or
    holds no exported branch (an interrupted run: resume it with ``aligngemini train --resume``)."""
    folder = Path(run).expanduser()
    path = folder / SUMMARY_NAME
    if not path.is_file():
        if (folder / "checkpoints").is_dir():
            raise RunOutputError(
                f"{path} not found: the run in {folder} stopped before it finished; {RESUME_HINT}"
            )
        raise RunOutputError(
            f"{path} not found; give the --output folder of a finished 'aligngemini train' run"
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunOutputError(f"{path}: not readable JSON ({exc})") from exc
    section = summary.get("export") if isinstance(summary, dict) else None
    if not isinstance(section, dict) or "family" not in section:
        raise RunOutputError(f"{path} holds no exported branch section; {RESUME_HINT}")
    return TrainedRun(folder, summary)
