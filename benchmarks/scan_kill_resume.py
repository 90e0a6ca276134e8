"""kill -9 proof for ``aligngemini scan``: SIGKILL a scan (its whole process group: with the Ray engine, the
local Ray cluster it started goes too) at random moments, start it again with the same arguments each time,
and check that the export holds every input exactly once.

The first kill lands while the model loads; each later one a random 0-1.5 s after the store passes a random
count of results drawn over the work left, so kills land in reading, scoring and writing alike. The inputs are
``kill_resume.py``'s: JPEGs of mixed sizes, every 50th unreadable, plus a byte-identical copy of every 25th.

    python benchmarks/scan_kill_resume.py --engine local --images 300 --out benchmarks/results/scan_kill_resume_local
    python benchmarks/scan_kill_resume.py --engine ray --images 150 --out benchmarks/results/scan_kill_resume_ray
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kill_resume import make_inputs  # noqa: E402
from record_header import describe_run, record_header, write_record  # noqa: E402

from aligngemini.scan.store import StoreError, open_results  # noqa: E402


def done_count(results: Path) -> int:
    try:
        store = open_results(results)
    except (StoreError, OSError, ValueError):
        return 0
    try:
        return store.count_done()
    except Exception:  # noqa: BLE001 - a store being created by the scan under test
        return 0
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--bundle", default="starter")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    p.add_argument("--machine", default="2-core CPU dev box")
    args = p.parse_args(argv)
    rnd = random.Random(args.seed)
    header = record_header("scan_kill_resume", argv, args.machine)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        inputs = make_inputs(folder, args.images, args.seed)
        for i, src in enumerate(inputs):
            if i % 25 == 3:
                shutil.copy(src, folder / f"copy-{src.name}")
        expected = {str(q) for q in folder.iterdir()}
        results = Path(tmp) / "results"
        cmd = [sys.executable, "-m", "aligngemini", "scan", str(folder), "--out", str(results), "--engine", args.engine,
               "--bundle", args.bundle, "--batch-size", str(args.batch_size), "-q"]  # fmt: skip
        runs: list[dict[str, Any]] = []
        for k in range(args.kills):
            before = done_count(results)
            share = (len(expected) - before) // (args.kills - k + 1)
            target = before if k == 0 else before + rnd.randint(1, max(1, share))
            jitter = rnd.uniform(0.0, 1.5)
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)  # fmt: skip
            t0 = time.monotonic()
            while proc.poll() is None and done_count(results) < target:
                time.sleep(0.1)
            time.sleep(jitter)
            finished = proc.poll() is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            runs.append({"run": k + 1, "kill_after_s": round(time.monotonic() - t0, 2), "finished_before_kill": finished,
                         "results_before": before, "results_after": done_count(results)})  # fmt: skip
            print(runs[-1], file=sys.stderr, flush=True)
        final = subprocess.run(cmd, capture_output=True, text=True, start_new_session=True)
        export = Path(tmp) / "export.jsonl"
        subprocess.run([sys.executable, "-m", "aligngemini", "scan", "--export", str(results), "-o", str(export)],
                       check=True, capture_output=True)  # fmt: skip
        recs = [json.loads(line) for line in export.read_text().splitlines()]
        paths = [r["path"] for r in recs]
        check = {"records": len(recs), "duplicates_of_paths": len(paths) - len(set(paths)),
                 "missing": len(expected - set(paths)), "unexpected": len(set(paths) - expected),
                 "content_duplicates": sum(bool(r["duplicate_of"]) for r in recs),
                 "errors": sum(r["error"] is not None for r in recs)}  # fmt: skip
        ok = check["records"] == len(expected) and check["duplicates_of_paths"] == check["missing"] == 0
        record = {
            **header, "engine": args.engine, "bundle": args.bundle, "inputs": len(expected), "kills": runs, "final_returncode": final.returncode,
            "final": check, "every_input_exactly_once": ok,
        }  # fmt: skip
    print(json.dumps(record, indent=1))
    if args.out:
        rows = "\n".join(f"| {k['run']} | {k['kill_after_s']} | {'finished first' if k['finished_before_kill'] else 'SIGKILL'} "
                         f"| {k['results_before']} -> {k['results_after']} |" for k in record["kills"])  # fmt: skip
        f = record["final"]
        write_record(
            args.out,
            record,
            f"""# kill -9 and resume: `aligngemini scan --engine {args.engine}`

{describe_run(record)}. Bundle
`{args.bundle}`, {record["inputs"]} inputs (JPEGs 200-900 px, every 50th unreadable, byte-identical copies of
every 25th). Each run is the same command, its whole process group killed with SIGKILL: the first while the
model loads, the others a random 0-1.5 s after the store passes a random result count.

| run | killed after (s) | how it ended | results in the store |
| --- | --- | --- | --- |
{rows}

Then the same command once more (exit {record["final_returncode"]}) and `--export`: {f["records"]} records for
{record["inputs"]} inputs, {f["duplicates_of_paths"]} paths twice, {f["missing"]} missing, {f["unexpected"]}
unexpected; {f["content_duplicates"]} recorded as copies (`duplicate_of`), {f["errors"]} unreadable.
**Every input exactly once: {"yes" if ok else "NO"}.**
""",
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
