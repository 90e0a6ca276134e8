"""How ``aligngemini scan`` scales on this machine, and whether listing, scheduling and the store hold at a
million inputs.

Part 1 (``--images N``): N photo-like 1024x768 JPEGs scanned with the local engine, then the Ray engine
with 1 and 2 CPU actors; wall time of the whole command (start-up and model loading included) and images/s.

Part 2 (``--simulate-rows R``): a Parquet listing of R distinct paths, hard links to ``--simulate-files``
small real PNGs, scanned with the local engine: R inputs planned, every file read and hashed, each distinct
content scored once and the rest recorded as duplicates; then ``--summary`` and ``--export`` to Parquet.
``--simulate-ray-rows`` does the same with the Ray engine (2 CPU actors).

    python benchmarks/scan_scaling.py --images 192 --simulate-rows 1000000 --simulate-ray-rows 100000 \
        --out benchmarks/results/scan_scaling
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import describe_run, record_header, write_record  # noqa: E402
from throughput import make_jpegs  # noqa: E402

SCAN = [sys.executable, "-m", "aligngemini", "scan"]


def run(args: list[str], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run([*SCAN, *args], capture_output=True, text=True, env=env or os.environ.copy())
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"scan {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    tally = re.findall(r"^aligngemini scan: (\d+ inputs in .*)$", proc.stderr, flags=re.M)
    plan = re.findall(r"planned .* in ([\d.]+) s", proc.stderr)
    return {"seconds": round(seconds, 1), "tally": tally[-1] if tally else None,
            "planning_seconds": float(plan[-1]) if plan else None}  # fmt: skip


def peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)


def scan_args(source: Path, out: Path, engine: str, bundle: str, batch: int, actors: int | None) -> list[str]:
    """The scan command's arguments for one measured run."""
    args = [
        str(source),
        "--out",
        str(out),
        "--engine",
        engine,
        "--bundle",
        bundle,
        "--batch-size",
        str(batch),
        "-q",
    ]
    return args + (["--actors", str(actors)] if actors else [])


def scaling(work: Path, n: int, bundle: str, batch: int) -> list[dict[str, Any]]:
    folder = work / "jpegs"
    folder.mkdir()
    make_jpegs(folder, n, (1024, 768))
    rows = []
    for engine, actors in (("local", None), ("ray", 1), ("ray", 2)):
        out = work / f"r-{engine}-{actors}"
        res = run(scan_args(folder, out, engine, bundle, batch, actors))
        rows.append({"engine": engine, "actors": actors, "images": n, **res,
                     "images_per_s": round(n / res["seconds"], 2)})  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def simulate(work: Path, rows: int, files: int, bundle: str, engine: str, batch: int) -> dict[str, Any]:
    src = work / f"sim-src-{engine}"
    links = work / f"sim-links-{engine}"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(files):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(src / f"{i:04d}.png")
    t0 = time.perf_counter()
    paths = []
    for k in range(rows):
        d = links / f"{k // 1000:04d}"
        if k % 1000 == 0:
            d.mkdir(parents=True)
        p = d / f"{k:07d}.png"
        os.link(src / f"{k % files:04d}.png", p)
        paths.append(str(p))
    listing = work / f"listing-{engine}.parquet"
    pq.write_table(pa.table({"path": paths}), listing)
    setup = time.perf_counter() - t0
    out = work / f"sim-{engine}"
    scan = run(scan_args(listing, out, engine, bundle, batch, 2 if engine == "ray" else None))
    t1 = time.perf_counter()
    proc = subprocess.run([*SCAN, "--summary", str(out), "--format", "json"], capture_output=True, text=True)
    summary_s = time.perf_counter() - t1
    summary = json.loads(proc.stdout)
    t2 = time.perf_counter()
    exported = work / f"sim-{engine}.parquet"
    subprocess.run([*SCAN, "--export", str(out), "-o", str(exported)], check=True, capture_output=True)
    export_s = time.perf_counter() - t2
    n_export = pq.ParquetFile(exported).metadata.num_rows
    store_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    result = {
        "engine": engine, "rows": rows, "distinct_files": files, "setup_seconds": round(setup, 1), **scan,
        "inputs_per_s": round(rows / scan["seconds"], 1),
        "summary_seconds": round(summary_s, 1), "export_seconds": round(export_s, 1), "exported_rows": n_export,
        "store_mb": round(store_mb, 1), "summary": {k: summary[k] for k in ("results", "scored", "duplicates", "errors")},
        "peak_rss_mb_of_children": peak_rss_mb(),
    }  # fmt: skip
    print(result, flush=True)
    assert n_export == rows and summary["scored"] == files and summary["duplicates"] == rows - files, result
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=0, help="part 1: JPEGs to scan with each engine (0: skip)")
    p.add_argument(
        "--simulate-rows", type=int, default=0, help="part 2: listing rows, local engine (0: skip)"
    )
    p.add_argument("--simulate-ray-rows", type=int, default=0, help="part 2 on the Ray engine (0: skip)")
    p.add_argument("--simulate-files", type=int, default=300, help="distinct real files behind the listing")
    p.add_argument("--bundle", default="starter")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    p.add_argument("--machine", default="2-core CPU dev box")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="scan-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    header = record_header("scan_scaling", argv, args.machine)
    result: dict[str, Any] = {**header, "bundle": args.bundle, "batch_size": args.batch_size}
    if args.images:
        result["scaling"] = scaling(work, args.images, args.bundle, args.batch_size)
    sims = []
    if args.simulate_rows:
        sims.append(
            simulate(work, args.simulate_rows, args.simulate_files, args.bundle, "local", args.batch_size)
        )
    if args.simulate_ray_rows:
        sims.append(
            simulate(work, args.simulate_ray_rows, args.simulate_files, args.bundle, "ray", args.batch_size)
        )
    result["simulated"] = sims
    if args.out:
        write_record(args.out, result, render(result))
    print(render(result))
    return 0


def render(r: dict[str, Any]) -> str:
    lines = [f"# Scan scaling: `{r['bundle']}`", "",
             describe_run(r) + ". Wall time of the whole command: start-up, model loading and Ray's start "
             "included.", ""]  # fmt: skip
    if r.get("scaling"):
        lines += ["| engine | actors | images | seconds | images/s |", "|---|---|---|---|---|"]
        lines += [f"| {s['engine']} | {s['actors'] or '-'} | {s['images']} | {s['seconds']} | {s['images_per_s']} |"
                  for s in r["scaling"]]  # fmt: skip
        lines.append("")
    for s in r.get("simulated") or []:
        lines += [
            f"Simulated listing, {s['engine']} engine: {s['rows']:,} rows (distinct paths, hard links to "
            f"{s['distinct_files']} real PNGs): planned in {s['planning_seconds']} s; scanned in {s['seconds']} s "
            f"({s['inputs_per_s']:,} inputs/s: every file read and hashed, {s['summary']['scored']} scored, "
            f"{s['summary']['duplicates']:,} recorded as duplicates); store {s['store_mb']} MB; --summary "
            f"{s['summary_seconds']} s; --export to Parquet {s['export_seconds']} s ({s['exported_rows']:,} rows); "
            f"largest RSS of any scan process so far in this run {s['peak_rss_mb_of_children']} MB.", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
