"""What the set builders share: a resumable output directory and a batched, threaded pipeline.

An output directory holds ``real/``, ``fake/``, ``manifest.jsonl`` and ``build.json`` (the config that
made it). Finished items are appended to ``manifest.jsonl`` as they complete, so an interrupted build
resumes where it stopped: an item counts as done when all its rows are in the manifest *and* their
files exist. A second run with a different config refuses to mix the two unless told to start over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from aligngemini.data.manifest import ManifestRow, read_manifest, write_manifest
from aligngemini.decode import ImageLoadError, LoadedImage, load_image

T = TypeVar("T")
P = TypeVar("P")
MANIFEST_NAME = "manifest.jsonl"
BUILD_NAME = "build.json"


class BuildError(RuntimeError):
    """A build that cannot proceed; the message names the directory or file and the fix."""


def stable_id(*parts: object, length: int = 16) -> str:
    """A short hex id that depends only on ``parts`` (not on order of processing or the machine)."""
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def seed_for(seed: int, item_id: str) -> list[int]:
    """Per-item RNG seed: the same item gets the same random choices whatever the worker or order."""
    return [int(seed), int(item_id[:15], 16)]


def row_path(row: ManifestRow, base: Path) -> Path:
    """A manifest row's file: relative paths are relative to the manifest's folder."""
    p = Path(row.path).expanduser()
    return p if p.is_absolute() else base / p


def row_key(row: ManifestRow) -> str:
    """What identifies a source image across runs: its content hash when known, else its path."""
    return row.sha256 or str(row.path)


def subsample(rows: Sequence[ManifestRow], limit: int | None, *, per_label: bool = True) -> list[ManifestRow]:
    """At most ``limit`` rows (per label), chosen by a content-keyed hash: spread over sources and splits,
    reproducible, and nested (the rows kept at 40 are among those kept at 80, so a resumed build grows)."""
    if limit is None:
        return list(rows)
    limit = max(0, int(limit))
    groups: dict[str, list[ManifestRow]] = {}
    for r in rows:
        groups.setdefault(r.label if per_label else "", []).append(r)
    keep: set[int] = set()
    for members in groups.values():
        ranked = sorted(members, key=lambda r: stable_id("subsample", row_key(r)))
        keep.update(id(r) for r in ranked[:limit])
    return [r for r in rows if id(r) in keep]


@dataclass
class BuildStats:
    """Counters updated from worker threads (hence the lock)."""

    done_before: int = 0
    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def skip(self, reason: str, what: str) -> None:
        with self._lock:
            self.skipped[reason] = self.skipped.get(reason, 0) + 1
            examples = self.skipped_examples.setdefault(reason, [])
            if len(examples) < 5:
                examples.append(what)

    def wrote(self) -> None:
        with self._lock:
            self.written += 1


def load_source(path: Path, stats: BuildStats) -> LoadedImage | None:
    """A builder's source image, or None after counting it as skipped ("unreadable", with the reason)."""
    try:
        return load_image(path)
    except ImageLoadError as exc:
        stats.skip("unreadable", f"{path}: {exc.reason}")
        return None


class OutputDir:
    """A set under construction: config check, done-items index, and a thread-safe manifest journal."""

    def __init__(self, root: Path, kind: str, config: dict[str, Any], *, overwrite: bool = False):
        self.root = Path(root).expanduser()
        self.kind = kind
        self.manifest_path = self.root / MANIFEST_NAME
        self._lock = threading.Lock()
        build_file = self.root / BUILD_NAME
        if overwrite and self.root.exists():
            for name in ("real", "fake", MANIFEST_NAME, BUILD_NAME):
                target = self.root / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        stamp = {"kind": kind, "config": config}
        if build_file.is_file():
            previous = json.loads(build_file.read_text(encoding="utf-8"))
            if previous != json.loads(json.dumps(stamp)):
                raise BuildError(
                    f"{self.root}: was built by a different {previous.get('kind')} config "
                    f"({build_file}); pass --overwrite to start over, or choose another --out"
                )
        elif self.manifest_path.exists():
            raise BuildError(
                f"{self.root}: has a {MANIFEST_NAME} but no {BUILD_NAME}, so it was not made by this builder; "
                "choose another --out or pass --overwrite"
            )
        (self.root / "real").mkdir(parents=True, exist_ok=True)
        (self.root / "fake").mkdir(parents=True, exist_ok=True)
        build_file.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        self.rows: list[ManifestRow] = self._read_existing()

    def _read_existing(self) -> list[ManifestRow]:
        if not self.manifest_path.exists():
            return []
        lines = self.manifest_path.read_text(encoding="utf-8").splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):  # a line cut short by an interrupted run
            self.manifest_path.write_text("".join(lines[:-1]), encoding="utf-8")
        return read_manifest(self.manifest_path)

    def done_groups(self, expected_rows: int) -> set[str]:
        """Groups (item ids) whose ``expected_rows`` rows are all recorded and all have their file."""
        by_group: dict[str, list[ManifestRow]] = {}
        for row in self.rows:
            by_group.setdefault(str(row.group), []).append(row)
        return {
            g
            for g, rows in by_group.items()
            if len(rows) >= expected_rows and all(row_path(r, self.root).is_file() for r in rows)
        }

    def append(self, rows: Sequence[ManifestRow]) -> None:
        """Record finished rows now, so that an interruption loses at most the items in flight."""
        with self._lock:
            with self.manifest_path.open("a", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(asdict(row), sort_keys=True, default=str) + "\n")
            # In memory, paths are absolute, as read_manifest gives them back.
            self.rows.extend(dataclasses.replace(r, path=str(row_path(r, self.root).resolve())) for r in rows)

    def finalize(self, keep_groups: set[str] | None = None) -> list[ManifestRow]:
        """Rewrite the manifest once, deduplicated by path (last wins), sorted, via ``write_manifest``."""
        by_path: dict[str, ManifestRow] = {}
        for row in self.rows:
            if keep_groups is None or str(row.group) in keep_groups:
                by_path[str(row_path(row, self.root).resolve())] = row
        rows = sorted(by_path.values(), key=lambda r: (str(r.group), r.label, str(r.path)))
        write_manifest(rows, self.manifest_path)
        self.rows = rows
        return rows


@dataclass
class BuildResult:
    """What a set build did: its folder and rows, the statistics, how many generator calls it made, how long it
    took, and its counts (pairs by generator for a pixel set, images by split/class for a semantic set)."""

    out_dir: Path
    rows: list[ManifestRow]
    stats: BuildStats
    calls: int = 0
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)


class SetBuilder:
    """What both set builders share: the recipe, the output folder, where relative source paths are resolved,
    the statistics, and a count of generator calls. Subclasses add ``prepare`` and ``finish``."""

    def __init__(self, cfg: Any, out: OutputDir, source_base: Path, stats: BuildStats) -> None:
        self.cfg, self.out, self.source_base, self.stats = cfg, out, source_base, stats
        self.calls = 0

    def load(self, row: ManifestRow) -> tuple[Path, LoadedImage] | None:
        """The row's source image, or None (counted in the stats with its reason) when it cannot be read."""
        path = row_path(row, self.source_base)
        loaded = load_source(path, self.stats)
        return None if loaded is None else (path, loaded)


def pending(out: OutputDir, jobs: Sequence[T], job_id: Callable[[T], str], rows_per_job: int,
            stats: BuildStats) -> list[T]:  # fmt: skip
    """The jobs a previous run of the same build has not finished (resume), counted in ``stats``."""
    done = out.done_groups(expected_rows=rows_per_job)
    todo = [j for j in jobs if job_id(j) not in done]
    stats.done_before = len(jobs) - len(todo)
    return todo


def report_build(root: Path, kind: str, unit: str, planned: int, stats: BuildStats, calls: tuple[str, int],
                 seconds: float, **fields: Any) -> Path:  # fmt: skip
    """``build_report.json``: what was planned, resumed, written and skipped, and the generator calls."""
    return write_report(root, "build_report.json", {
        "kind": kind, f"{unit}_planned": planned, f"{unit}_done_before": stats.done_before,
        f"{unit}_written": stats.written, "skipped": stats.skipped, "skipped_examples": stats.skipped_examples,
        calls[0]: calls[1], "seconds": round(seconds, 2), **fields,
    })  # fmt: skip


def write_report(root: Path, name: str, payload: dict[str, Any]) -> Path:
    path = Path(root) / name
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path


def run_batched(
    items: Iterable[T],
    prepare: Callable[[T], P | None],
    process_batch: Callable[[list[P]], list[Any]],
    finish: Callable[[P, Any], None],
    *,
    workers: int,
    batch_size: int,
    total: int | None = None,
    desc: str = "building",
    progress: bool = True,
) -> None:
    """``prepare`` items in worker threads (decode, crop), run ``process_batch`` on batches in this thread
    (the generator: torch uses its own threads), then ``finish`` each result in the workers (blend,
    encode, write). ``prepare`` returns None for an item to skip. Order of completion does not matter
    because every item carries its own id and seed."""
    workers = max(1, int(workers))
    batch_size = max(1, int(batch_size))
    bar = tqdm(total=total, desc=desc, unit="item", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    lookahead = max(2 * batch_size, 2 * workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="build") as pool:
        pending_finish: list[Future[None]] = []

        def prepared_stream() -> Iterator[P | None]:
            queue: list[Future[P | None]] = []
            it = iter(items)
            for item in it:
                queue.append(pool.submit(prepare, item))
                if len(queue) >= lookahead:
                    yield queue.pop(0).result()
            while queue:
                yield queue.pop(0).result()

        def flush(batch: list[P]) -> None:
            outputs = process_batch(batch)
            if len(outputs) != len(batch):
                raise BuildError(f"batch step returned {len(outputs)} results for {len(batch)} inputs")
            for prepared, out in zip(batch, outputs, strict=True):
                pending_finish.append(pool.submit(finish, prepared, out))

        def drain(block: bool) -> None:
            keep: list[Future[None]] = []
            for fut in pending_finish:
                if block or fut.done():
                    fut.result()  # re-raises a worker's error here
                    bar.update(1)
                else:
                    keep.append(fut)
            pending_finish[:] = keep

        batch: list[P] = []
        for prepared in prepared_stream():
            if prepared is None:
                bar.update(1)
                continue
            batch.append(prepared)
            if len(batch) >= batch_size:
                flush(batch)
                batch = []
                drain(block=len(pending_finish) > lookahead)
        if batch:
            flush(batch)
        drain(block=True)
    bar.close()
