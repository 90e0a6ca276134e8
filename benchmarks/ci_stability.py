"""Is CI green every time? Run `.ci/run` once in a fresh clone (fresh venv, fresh home), then the README's test
command N more times in that clone while another CPU-heavy job (a second pytest of the whole suite, started
again whenever it ends) runs beside it, and record every outcome. ``--select`` repeats only the tests a
pytest ``-k`` expression picks, for a test suspected of failing under load. The clone's venv and home
(about 7 GB) are deleted at the end; the logs stay.

    python benchmarks/ci_stability.py --runs 5 --out benchmarks/results/ci_stability
    python benchmarks/ci_stability.py --runs 40 --select two_processes --out benchmarks/results/ci_stability_ddp
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import describe_run, record_header, write_record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEST_COMMAND = [".venv/bin/python", "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def summary_of(output: str) -> str:
    found = re.findall(r"^=*\s*(\d+ (?:passed|failed).*?) in [\d.]+s", output, flags=re.M)
    return found[-1] if found else output.strip().splitlines()[-1][:200] if output.strip() else ""


def run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    out = log.read_text(errors="replace")
    return {"returncode": proc.returncode, "seconds": round(time.monotonic() - t0, 1), "summary": summary_of(out),
            "load_avg_after": round(os.getloadavg()[0], 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--runs", type=int, default=5, help="test-command runs under load after .ci/run (default 5)"
    )
    p.add_argument("--ref", default="main", help="what to clone (default: main)")
    p.add_argument("--select", metavar="EXPR", help="repeat only the tests this pytest -k expression picks")
    p.add_argument("--keep", action="store_true", help="keep the clone's venv and home (about 7 GB)")
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    p.add_argument("--machine", default="2-core CPU dev box")
    args = p.parse_args(argv)
    header = record_header("ci_stability", argv, args.machine)
    work = Path(tempfile.mkdtemp(prefix="ci-stability-"))
    clone, home = work / "clone", work / "home"
    home.mkdir()
    subprocess.run(["git", "clone", "-q", "--branch", args.ref, str(ROOT), str(clone)], check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALIGNGEMINI_", "VIRTUAL_ENV"))}
    env["HOME"] = str(home)  # a fresh cache: setup fetches what the tests need, as on a new machine
    results: list[dict[str, Any]] = []
    first = run(["bash", ".ci/run"], clone, env, work / "ci-run.log")
    results.append({"run": 1, "what": ".ci/run (fresh clone, venv and home)", "beside": "nothing", **first})
    print(results[-1], file=sys.stderr)
    repeated = TEST_COMMAND + (["-k", args.select] if args.select else [])
    what = f"README test command, -k {args.select}" if args.select else "README test command"
    load = None
    try:
        for k in range(args.runs):
            if load is None or load.poll() is not None:  # keep a whole-suite pytest running beside
                load = subprocess.Popen(TEST_COMMAND, cwd=clone, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)  # fmt: skip
            res = run(repeated, clone, env, work / f"test-{k}.log")
            results.append({"run": k + 2, "what": what, "beside": "a pytest of the whole suite", **res})
            print(results[-1], file=sys.stderr)
    finally:
        if load is not None:
            load.terminate()
            load.wait()
        if not args.keep:
            shutil.rmtree(clone / ".venv", ignore_errors=True)
            shutil.rmtree(home, ignore_errors=True)
    green = sum(r["returncode"] == 0 for r in results)
    record = {**header, "commit": commit, "green": green, "runs": len(results), "results": results,
              "logs": str(work)}  # fmt: skip
    print(json.dumps(record, indent=1))
    if args.out:
        rows = "\n".join(f"| {r['run']} | {r['what']} | {r['beside']} | {'green' if r['returncode'] == 0 else 'RED'} | "
                         f"{r['summary']} | {r['seconds']} | {r['load_avg_after']} |" for r in results)  # fmt: skip
        write_record(
            args.out,
            record,
            f"# CI stability: {green}/{len(results)} green\n\n"
            f"{describe_run(record, f'a fresh clone of `{args.ref}` at {commit}')}.\n\n"
            "| run | what | beside it | result | tests | seconds | load average after |\n"
            f"| --- | --- | --- | --- | --- | --- | --- |\n{rows}\n",
        )
    return 0 if green == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
