"""Where a scan's results live, so that a crash or a kill -9 loses nothing and a re-run scores only what is
missing. A RESULTS folder holds one of two stores, both read back by ``summary`` and ``export``:

- ``scan.sqlite`` (the local engine): SQLite in WAL mode; the planned inputs and one row per finished input,
  committed a block at a time, keyed by path (so never twice) and indexed by sha256 (so content is scored
  once);
- ``shards/*.parquet`` (the Ray engine): one Parquet file per finished block, written to a temporary name
  and renamed, so that a shard is either whole or absent; ``meta.json`` beside it.

Both keep the full record (``record.py``'s schema) as JSON, beside the columns a summary needs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

Record = dict[str, Any]
SQLITE_NAME, SHARDS_DIR, META_NAME = "scan.sqlite", "shards", "meta.json"
SHARD_COLUMNS = ("seq", "path", "sha256", "verdict", "error", "duplicate_of", "record")


class StoreError(ValueError):
    """A RESULTS folder that cannot be used as asked; the message says why and what to do."""


def engine_of(results: Path) -> str | None:
    """ "local" or "ray" for a RESULTS folder holding that engine's store, None when it holds neither."""
    if (results / SQLITE_NAME).is_file():
        return "local"
    if (results / META_NAME).is_file() or (results / SHARDS_DIR).is_dir():
        return "ray"
    return None


def check_meta(meta: dict[str, Any], bundle_id: str, results: Path) -> None:
    old = meta.get("bundle_id")
    if old and old != bundle_id:
        raise StoreError(f"{results} holds results of bundle {old}, not {bundle_id}: scan into another --out, "
                         "or with the same bundle to continue it")  # fmt: skip


class SQLiteStore:
    """The local engine's store. One writer (the scanning process); readers may open it at any time."""

    def __init__(self, results: Path, *, create: bool = False):
        path = results / SQLITE_NAME
        if not create and not path.is_file():
            raise StoreError(f"{results} holds no scan results ({SQLITE_NAME} is missing)")
        results.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # with WAL: a committed block survives a killed process
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS inputs (seq INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
            CREATE TABLE IF NOT EXISTS results (
                path TEXT PRIMARY KEY, seq INTEGER NOT NULL, sha256 TEXT, verdict TEXT, error TEXT,
                duplicate_of TEXT, record TEXT NOT NULL);
            CREATE INDEX IF NOT EXISTS results_seq ON results (seq);
            CREATE TABLE IF NOT EXISTS contents (sha256 TEXT PRIMARY KEY, record TEXT NOT NULL);
            """
        )

    def close(self) -> None:
        self.db.close()

    # -- meta ---------------------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    def set_meta(self, **values: Any) -> None:
        with self._txn():
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])  # fmt: skip

    # -- planning -----------------------------------------------------------------------------------------
    def add_inputs(self, paths: Iterable[str], chunk: int = 20_000) -> int:
        """Plan these inputs (a path already planned keeps its place); returns how many were new."""
        before = self.count_inputs()
        batch: list[tuple[str]] = []
        for p in paths:
            batch.append((p,))
            if len(batch) >= chunk:
                self._insert_inputs(batch)
                batch = []
        if batch:
            self._insert_inputs(batch)
        return self.count_inputs() - before

    def _insert_inputs(self, batch: list[tuple[str]]) -> None:
        with self._txn():
            self.db.executemany("INSERT OR IGNORE INTO inputs (path) VALUES (?)", batch)

    def count_inputs(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM inputs").fetchone()[0])

    def count_done(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM results").fetchone()[0])

    def pending(self, page: int) -> Iterator[list[tuple[int, str]]]:
        """Planned inputs without a result, in input order, a page at a time."""
        last = -1
        while True:
            rows = self.db.execute(
                "SELECT i.seq, i.path FROM inputs i LEFT JOIN results r ON r.path = i.path "
                "WHERE r.path IS NULL AND i.seq > ? ORDER BY i.seq LIMIT ?", (last, page)).fetchall()  # fmt: skip
            if not rows:
                return
            last = rows[-1][0]
            yield [(int(s), str(p)) for s, p in rows]

    # -- results ------------------------------------------------------------------------------------------
    def known(self, sha256: str) -> Record | None:
        row = self.db.execute(
            "SELECT record FROM results WHERE sha256 = ? AND duplicate_of IS NULL ORDER BY seq LIMIT 1",
            (sha256,),
        ).fetchone()
        return json.loads(row[0]) if row else None

    def write(self, rows: Iterable[tuple[int, Record]]) -> None:
        """One committed transaction: every record of a finished block, or none of them."""
        values = [(r["path"], seq, r.get("sha256"), r.get("verdict"), r.get("error"), r.get("duplicate_of"),
                   json.dumps(r, allow_nan=False)) for seq, r in rows]  # fmt: skip
        with self._txn():
            self.db.executemany("INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?, ?)", values)

    def iter_records(self) -> Iterator[Record]:
        cur = self.db.execute("SELECT record FROM results ORDER BY seq")
        while rows := cur.fetchmany(4096):
            yield from (json.loads(r[0]) for r in rows)

    def _txn(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


class ShardStore:
    """The Ray engine's store: whole Parquet shards, each renamed into place when its block is done."""

    def __init__(self, results: Path, *, create: bool = False):
        if not create and engine_of(results) != "ray":
            raise StoreError(
                f"{results} holds no Ray scan results ({META_NAME} and {SHARDS_DIR}/ are missing)"
            )
        self.results = results
        self.shards = results / SHARDS_DIR
        self.shards.mkdir(parents=True, exist_ok=True)
        for stale in self.shards.glob(".tmp-*"):  # a shard being written when the last run was killed
            stale.unlink(missing_ok=True)

    def meta(self) -> dict[str, Any]:
        path = self.results / META_NAME
        return json.loads(path.read_text()) if path.is_file() else {}

    def set_meta(self, **values: Any) -> None:
        meta = {**self.meta(), **values}
        tmp = self.results / f".tmp-{uuid.uuid4().hex}-{META_NAME}"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, self.results / META_NAME)

    def shard_files(self) -> list[Path]:
        return sorted(self.shards.glob("part-*.parquet"))

    def read(self, columns: list[str]) -> Any:
        """The named columns of every shard, as one pyarrow Table (empty when there are none)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = self.shard_files()
        if not files:
            return pa.table({c: pa.array([], type=_SCHEMA().field(c).type) for c in columns})
        return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])

    def count_done(self) -> int:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.shard_files())

    def done_paths(self) -> set[str]:
        return set(self.read(["path"]).column("path").to_pylist())

    def first_records(self) -> dict[str, Record]:
        """sha256 -> the first record scored for that content (what a later copy is a duplicate of)."""
        table = self.read(["seq", "sha256", "duplicate_of", "record"])
        firsts: dict[str, tuple[int, str]] = {}
        for seq, sha, dup, rec in zip(
            *(table.column(c).to_pylist() for c in table.column_names), strict=True
        ):
            if sha and dup is None and (sha not in firsts or seq < firsts[sha][0]):
                firsts[sha] = (seq, rec)
        return {sha: json.loads(rec) for sha, (_, rec) in firsts.items()}

    def write(self, rows: list[tuple[int, Record]]) -> Path | None:
        """One shard, whole or not at all: written under a temporary name, then renamed."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return None
        cols = {
            "seq": [s for s, _ in rows],
            "path": [r["path"] for _, r in rows],
            "sha256": [r.get("sha256") for _, r in rows],
            "verdict": [r.get("verdict") for _, r in rows],
            "error": [r.get("error") for _, r in rows],
            "duplicate_of": [r.get("duplicate_of") for _, r in rows],
            "record": [json.dumps(r, allow_nan=False) for _, r in rows],
        }
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.shards / f".tmp-{name}"
        pq.write_table(pa.table(cols, schema=_SCHEMA()), tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.shards / name)
        return self.shards / name

    def iter_records(self) -> Iterator[Record]:
        table = self.read(["seq", "record"]).sort_by("seq")
        for rec in table.column("record").to_pylist():
            yield json.loads(rec)

    def close(self) -> None:
        pass


def _SCHEMA() -> Any:  # noqa: N802 - a constant, built on first use so that pyarrow loads only when needed
    import pyarrow as pa

    return pa.schema([("seq", pa.int64()), ("path", pa.string()), ("sha256", pa.string()),
                      ("verdict", pa.string()), ("error", pa.string()), ("duplicate_of", pa.string()),
                      ("record", pa.string())])  # fmt: skip


def open_results(results: Path) -> SQLiteStore | ShardStore:
    """The store a RESULTS folder holds, for reading."""
    engine = engine_of(results)
    if engine is None:
        raise StoreError(f"{results} holds no scan results (neither {SQLITE_NAME} nor {SHARDS_DIR}/); "
                         "run `aligngemini scan SOURCE --out RESULTS` first")  # fmt: skip
    return SQLiteStore(results) if engine == "local" else ShardStore(results)
