"""Reading a scan's results back: the summary (counts, for people or scripts) and the export of one record per
input path as JSONL, CSV or Parquet."""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from aligngemini.record import Verdict, csv_row

EXPORT_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def error_reason(error: str) -> str:
    """An error message with its particulars (sizes, offsets) masked, so that errors group by reason."""
    return re.sub(r"\d+", "N", error.split(" (", 1)[0])[:80]


def summarize(store: Any) -> dict[str, Any]:
    """Counts over every record in ``store``, plus what the store's meta says about the runs."""
    verdicts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    n = duplicates = declared_ai = scored = 0
    for rec in store.iter_records():
        n += 1
        duplicates += bool(rec.get("duplicate_of"))
        scored += not rec.get("duplicate_of") and rec.get("error") is None
        if rec.get("error") is not None:
            errors[error_reason(rec["error"])] += 1
        else:
            verdicts[rec.get("verdict") or "none"] += 1
        declared_ai += bool((rec.get("provenance") or {}).get("declared_ai"))
    meta = store.meta()
    planned = store.count_inputs() if hasattr(store, "count_inputs") else meta.get("inputs")
    return {
        "results": n,
        "planned_inputs": planned,
        "pending": None if planned is None else max(0, int(planned) - n),
        "scored": scored,
        "duplicates": duplicates,
        "errors": sum(errors.values()),
        "errors_by_reason": dict(errors.most_common()),
        "verdicts": {v: verdicts.get(v, 0) for v in ("fake", "real", "uncertain")},
        "declared_ai": declared_ai,
        "bundle": meta.get("bundle_id"),
        "engine": meta.get("engine"),
        "seconds": meta.get("seconds"),
        "runs": meta.get("runs"),
    }


def render_summary(s: dict[str, Any]) -> str:
    lines = [
        f"results: {s['results']}"
        + (
            f" of {s['planned_inputs']} planned ({s['pending']} pending)"
            if s["planned_inputs"] is not None
            else ""
        ),  # fmt: skip
        f"bundle: {s['bundle']}; engine: {s['engine']}; runs: {s['runs']}; scanning time: {s['seconds']} s",
        f"scored: {s['scored']}; duplicates: {s['duplicates']}; errors: {s['errors']}",
        "verdicts: " + ", ".join(f"{k} {v}" for k, v in s["verdicts"].items()),
        f"files declaring AI in their metadata: {s['declared_ai']}",
    ]
    lines += [f"  error: {why}: {n}" for why, n in s["errors_by_reason"].items()]
    return "\n".join(lines) + "\n"


def export(store: Any, out: Path, *, overwrite: bool = False) -> int:
    """Every record, in input order, to ``out`` (format by suffix); written to a temporary name, then renamed.
    Returns how many records were written."""
    fmt = EXPORT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ValueError(f"{out}: export to .jsonl, .csv or .parquet (the suffix chooses)")
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    n = 0
    if fmt == "parquet":
        n = _export_parquet(store, tmp)
    else:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=Verdict.CSV_FIELDS) if fmt == "csv" else None
            if writer is not None:
                writer.writeheader()
            for rec in store.iter_records():
                if writer is not None:
                    writer.writerow(csv_row(rec))
                else:
                    fh.write(json.dumps(rec, allow_nan=False) + "\n")
                n += 1
    os.replace(tmp, out)
    return n


def _export_parquet(store: Any, tmp: Path, chunk: int = 50_000) -> int:
    """The CSV's flat columns (typed), plus ``record``: the whole record as JSON."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    floats = {f for f in Verdict.CSV_FIELDS if f.endswith("p_fake")}
    bools = {f for f in Verdict.CSV_FIELDS if f.endswith(("_fake", "_declared_ai", "_signed"))} - floats
    schema = pa.schema([(f, pa.float64() if f in floats else pa.bool_() if f in bools else pa.string())
                        for f in Verdict.CSV_FIELDS] + [("record", pa.string())])  # fmt: skip
    n = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        rows: list[dict[str, Any]] = []
        for rec in store.iter_records():
            rows.append({**csv_row(rec), "record": json.dumps(rec, allow_nan=False)})
            if len(rows) >= chunk:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                n += len(rows)
                rows = []
        if rows or n == 0:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            n += len(rows)
    return n
