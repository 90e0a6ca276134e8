"""A cache of every image's per-branch scores, so that re-fusing or re-thresholding never re-runs a model.

Rows are keyed by (image sha256, branch model key, perturbation). The *branch model key* hashes the
branch's config section without its threshold, together with the bundle's weight checksums and the
arithmetic the loaded branch computes in (device type and dtype: a bf16 score is not an fp32 one): a bundle
copy whose only change is its thresholds or fusion (what ``aligngemini calibrate`` writes) has the same
keys and reuses every score, which ``Detector.bundle_id`` (a digest of the whole config) would not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aligngemini.paths import cache_dir

DEFAULT_NAME = "scores.sqlite"
_CHUNK = 400  # keeps each query under SQLite's parameter limit
# Config keys that change decisions but not a branch's scores.
_DECISION_KEYS = frozenset({"threshold"})


def default_cache_path() -> Path:
    return cache_dir("scores") / DEFAULT_NAME


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes: the same digest ``decode`` records for the decoded image."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def branch_model_keys(detector: Any) -> dict[str, str]:
    """One cache key per branch role of ``detector`` (anything with ``branches`` and ``config``;
    falls back to ``bundle_id`` when the config has no branch sections). The branch's ``arithmetic`` (e.g.
    "cpu:bfloat16") is part of its key."""
    roles = list(detector.branches)
    config = getattr(detector, "config", None) or {}
    sections = config.get("branches") or {}
    files = config.get("files") or {}
    keys: dict[str, str] = {}
    for role in roles:
        section = sections.get(role)
        if section is None:
            base: Any = {"bundle_id": getattr(detector, "bundle_id", "unknown")}
        else:
            base = {k: v for k, v in section.items() if k not in _DECISION_KEYS}
        blob = json.dumps({"role": role, "branch": base, "files": files,
                           "arithmetic": detector.branches[role].arithmetic},
                          sort_keys=True, default=str)  # fmt: skip
        keys[role] = f"{role}:{hashlib.sha256(blob.encode()).hexdigest()[:20]}"
    return keys


class ScoreCache:
    """SQLite-backed score store; safe to share between runs (WAL journal, busy timeout)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        # WAL lets several runs share the file; some file systems refuse it, which only costs concurrency.
        with contextlib.suppress(sqlite3.OperationalError):
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS scores (sha256 TEXT NOT NULL, model TEXT NOT NULL, "
            "perturb TEXT NOT NULL, score REAL NOT NULL, PRIMARY KEY (sha256, model, perturb)) WITHOUT ROWID"
        )
        self._db.commit()

    def get(
        self, shas: Sequence[str], model_keys: Mapping[str, str], perturb: str
    ) -> dict[str, dict[str, float]]:
        """Scores of the images that every branch has scored: ``{sha256: {role: p_fake}}``."""
        by_model = {key: role for role, key in model_keys.items()}
        models = list(by_model)
        found: dict[str, dict[str, float]] = {}
        unique = list(dict.fromkeys(s for s in shas if s))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            q = (
                f"SELECT sha256, model, score FROM scores WHERE perturb = ? "
                f"AND model IN ({','.join('?' * len(models))}) AND sha256 IN ({','.join('?' * len(chunk))})"
            )
            for sha, model, score in self._db.execute(q, [perturb, *models, *chunk]):
                found.setdefault(sha, {})[by_model[model]] = float(score)
        return {sha: s for sha, s in found.items() if len(s) == len(models)}

    def put(
        self, rows: Iterable[tuple[str, Mapping[str, float]]], model_keys: Mapping[str, str], perturb: str
    ) -> int:
        """Store ``(sha256, {role: p_fake})`` rows; returns how many scores were written."""
        values = [
            (sha, model_keys[role], perturb, float(score))
            for sha, scores in rows
            for role, score in scores.items()
            if role in model_keys and score == score  # NaN never enters the cache
        ]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)", values)
        return len(values)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ScoreCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
