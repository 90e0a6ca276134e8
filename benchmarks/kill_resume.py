"""kill -9 proof for ``aligngemini detect --resume``: SIGKILL a long run at random moments, resume it each time,
and check that the final JSONL holds every input exactly once, every line whole.

The run is the CLI as a user starts it, a separate process killed from outside with SIGKILL: once while the
model loads, then each time a random moment after its output passes a random line count drawn over the work
left (so kills land in decoding, scoring and writing alike). Images are JPEGs of mixed sizes with a few
unreadable files among them.

    python benchmarks/kill_resume.py                                   # 500 images, 5 kills, starter bundle
    python benchmarks/kill_resume.py --images 100 --kills 3 --bundle path/to/bundle
    python benchmarks/kill_resume.py --out benchmarks/results/kill_resume   # writes .json and .md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import record_header, write_record  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=500, help="inputs to score (default: 500)")
    p.add_argument("--kills", type=int, default=5, help="SIGKILLs before the run may finish (default: 5)")
    p.add_argument("--bundle", default="starter", help="bundle to run (default: starter)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    p.add_argument("--machine", default="2-core CPU dev box", help="how the result names this machine")
    return p.parse_args(argv)


def make_inputs(folder: Path, n: int, seed: int) -> list[Path]:
    """Mostly photo-like JPEGs (smooth gradients plus noise) of varied sizes; every 50th file is broken."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.jpg"
        if i % 50 == 49:
            path.write_bytes(b"\xff\xd8\xff\xe0" + rng.bytes(200))  # a JPEG header and garbage
        else:
            h, w = int(rng.integers(200, 700)), int(rng.integers(200, 900))
            base = np.linspace(0, 255, w)[None, :, None] * rng.random((1, 1, 3))
            arr = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(path, quality=int(rng.integers(60, 96)))
        paths.append(path)
    return paths


def check_output(out: Path, expected: set[str]) -> dict[str, Any]:
    data = out.read_bytes()
    lines = data.decode("utf-8").splitlines()
    paths, bad = [], 0
    for line in lines:
        try:
            paths.append(json.loads(line)["path"])
        except (json.JSONDecodeError, KeyError):
            bad += 1
    return {
        "lines": len(lines),
        "unparseable_lines": bad,
        "ends_with_newline": data.endswith(b"\n"),
        "duplicates": len(paths) - len(set(paths)),
        "missing": len(expected - set(paths)),
        "unexpected": len(set(paths) - expected),
        "errors_recorded": sum(json.loads(x)["error"] is not None for x in lines),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    header = record_header("kill_resume", argv, args.machine)
    rnd = random.Random(args.seed)
    exe = [sys.executable, "-m", "aligngemini.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        inputs = make_inputs(folder, args.images, args.seed)
        out = Path(tmp) / "verdicts.jsonl"
        cmd = [*exe, "detect", str(folder), "--bundle", args.bundle, "--batch-size", str(args.batch_size),
               "-q", "-f", "jsonl", "-o", str(out), "--resume"]  # fmt: skip

        # One uninterrupted run to learn how long the whole job takes; kills are drawn within that span.
        t0 = time.monotonic()
        ref = subprocess.run(cmd, capture_output=True, text=True)
        full_s = time.monotonic() - t0
        if ref.returncode not in (0, 1):
            print(ref.stderr, file=sys.stderr)
            return 2
        reference = check_output(out, {str(p) for p in inputs})
        out.unlink()

        runs: list[dict[str, Any]] = []
        for k in range(args.kills):
            before = len(out.read_bytes().splitlines()) if out.exists() else 0
            # Kill points are drawn over the work still left, so that every run is cut short: the run is
            # killed a random moment after its output passes a random line count (the first run while the
            # model loads, before any line).
            share = (len(inputs) - before) // (args.kills - k + 1)
            target = before if k == 0 else before + rnd.randint(1, max(1, share))
            jitter = rnd.uniform(0.0, 1.5)
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            t_start = time.monotonic()
            while (
                proc.poll() is None and (len(out.read_bytes().splitlines()) if out.exists() else 0) < target
            ):
                time.sleep(0.05)
            time.sleep(jitter)
            finished_early = proc.poll() is not None
            if not finished_early:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            after = out.read_bytes() if out.exists() else b""
            runs.append({"run": k + 1, "kill_after_s": round(time.monotonic() - t_start, 2),
                         "finished_before_kill": finished_early, "returncode": proc.returncode,
                         "lines_before": before, "lines_after": len(after.splitlines()),
                         "torn_last_line": bool(after) and not after.endswith(b"\n")})  # fmt: skip
            print(f"kill {k + 1}: after {runs[-1]['kill_after_s']:.1f} s, lines {before} -> {runs[-1]['lines_after']}"
                  f"{' (torn last line)' if runs[-1]['torn_last_line'] else ''}", file=sys.stderr)  # fmt: skip
        final = subprocess.run(cmd, capture_output=True, text=True)
        result = check_output(out, {str(p) for p in inputs})
        ok = (result["duplicates"] == result["missing"] == result["unexpected"] == result["unparseable_lines"] == 0
              and result["ends_with_newline"] and result["lines"] == len(inputs))  # fmt: skip
        record = {
            **header,
            "detect_command": " ".join(["aligngemini", *cmd[3:]]).replace(tmp, "TMP"),
            "bundle": args.bundle,
            "inputs": len(inputs),
            "uninterrupted_run_s": round(full_s, 1),
            "uninterrupted_result": reference,
            "kills": runs,
            "final_returncode": final.returncode,
            "final": result,
            "every_input_exactly_once": ok,
        }
    print(json.dumps(record, indent=1))
    if args.out:
        write_record(args.out, record, render_md(record))
    return 0 if ok else 1


def render_md(r: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {k['run']} | {k['kill_after_s']} | {'finished first' if k['finished_before_kill'] else 'SIGKILL'} | "
        f"{k['lines_before']} -> {k['lines_after']} | {'yes' if k['torn_last_line'] else 'no'} |"
        for k in r["kills"]
    )
    f = r["final"]
    return f"""# kill -9 and resume: `aligngemini detect --resume`

`python benchmarks/kill_resume.py --out benchmarks/results/kill_resume` on the {r["machine"]}, {r["date"]}
(load average {r["load_avg_at_start"]:.2f} at start). Bundle `{r["bundle"]}`, {r["inputs"]} inputs
(JPEGs 200-900 px, every 50th unreadable). An uninterrupted run took {r["uninterrupted_run_s"]} s. Each
resumed run is killed from outside with SIGKILL: the first while the model loads, the others a random
0-1.5 s after their output passes a random line count drawn over the work left. "killed after" counts
from the run's start. The box was shared with other jobs (load above), which slows runs, not results.

| run | killed after (s) | how it ended | lines in output | torn last line left |
| --- | --- | --- | --- | --- |
{rows}

Final resumed run: exit {r["final_returncode"]}; {f["lines"]} lines for {r["inputs"]} inputs, {f["duplicates"]}
duplicates, {f["missing"]} missing, {f["unparseable_lines"]} unparseable lines, ends with a newline:
{f["ends_with_newline"]}; {f["errors_recorded"]} inputs recorded with an error (the unreadable files).
**Every input exactly once: {r["every_input_exactly_once"]}.**
"""


if __name__ == "__main__":
    sys.exit(main())
