"""End to end on the starter corpus: build the pure-pixel and pure-semantic sets, then audit them.

    python benchmarks/audit_starter.py                 # everything, recorded under benchmarks/results/
    python benchmarks/audit_starter.py --limit-pixel 40 --probe-steps 100   # a quicker look

Runs the real commands (``aligngemini data build-pixel | build-semantic | audit``) as subprocesses, so the
recorded numbers come from exactly the command lines written into the results. Needs the starter corpus
(``aligngemini data fetch-starter``) and, for the pixel set, a VAE (``aligngemini generators train-vae``,
passed with ``--vae DIR``); without one it stops, unless ``--fallback-generator`` names another generator.
Builds are resumable, so a second run only audits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _run(cmd: list[str], log: list[dict], threads: int) -> None:
    print("+", shlex.join(cmd), file=sys.stderr, flush=True)
    started = time.perf_counter()
    # torch reads OMP_NUM_THREADS at start-up; on a shared 2-core box one thread beats two.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, env=env)
    seconds = round(time.perf_counter() - started, 1)
    print(proc.stdout, end="", file=sys.stderr)
    log.append(
        {
            "command": f"OMP_NUM_THREADS={threads} {shlex.join(cmd)}",
            "seconds": seconds,
            "exit": proc.returncode,
            "stdout": proc.stdout,
        }
    )
    if proc.returncode != 0:
        raise SystemExit(f"command failed with exit {proc.returncode}: {shlex.join(cmd)}")


def corpus_counts(manifest: Path) -> dict:
    from aligngemini.data.manifest import read_manifest

    rows = read_manifest(manifest)
    by = Counter((str(r.split), r.label, str(r.source)) for r in rows)
    out: dict = {
        "total": len(rows),
        "by_label": dict(Counter(r.label for r in rows)),
        "by_split_label_source": {},
    }
    for (split, label, source), n in sorted(by.items()):
        out["by_split_label_source"].setdefault(split, {}).setdefault(label, {})[source] = n
    return out


def main() -> int:
    from aligngemini.paths import data_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=data_dir("starter") / "manifest.jsonl")
    ap.add_argument("--vae", type=Path, default=data_dir("models") / "vae-starter")
    ap.add_argument(
        "--fallback-generator",
        help="pixel-set generator when the VAE is missing (e.g. esrgan:medium:x2; by default a missing VAE "
        "is an error, since ESRGAN is the family the pixel branch is meant never to train on)",
    )
    ap.add_argument(
        "--work", type=Path, default=data_dir("audit-starter"), help="where the sets and report go"
    )
    ap.add_argument("--crop-size", type=int, default=256)
    ap.add_argument(
        "--lowfreq-align",
        type=float,
        default=1.0,
        help="build-pixel lowfreq_align_prob (measured with the interim VAE: without it its colour drift lets "
        "a CLIP probe on a 64 px view separate the pairs at 0.92)",
    )
    ap.add_argument("--limit-pixel", type=int, help="real images for the pixel set (default: all)")
    ap.add_argument("--limit-semantic", type=int, help="images per class for the semantic set (default: all)")
    ap.add_argument("--size-range", type=int, nargs=2, default=[224, 320])
    ap.add_argument("--jpeg-range", type=int, nargs=2, default=[70, 95])
    ap.add_argument(
        "--semantic-vae",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="round-trip the semantic set through the VAE too (default; without it the starter's realorai "
        "resampling difference leaves a pixel cue: pixel probe 0.63 on the semantic set)",
    )
    ap.add_argument(
        "--min-downscale", type=float, default=1.0, help="semantic set: shrink every image at least this much"
    )
    ap.add_argument("--balance", default="knn", choices=["knn", "groups", "none"])
    ap.add_argument("--probe-steps", type=int, default=300)
    ap.add_argument("--max-images", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per command (OMP_NUM_THREADS)")
    ap.add_argument("--tag", default="audit_starter", help="results file stem under benchmarks/results/")
    ap.add_argument(
        "--note", action="append", default=[], help="a line recorded with the results (repeatable)"
    )
    args = ap.parse_args()

    if not args.manifest.is_file():
        print(
            f"{args.manifest}: no starter manifest yet; run 'aligngemini data fetch-starter' first",
            file=sys.stderr,
        )
        return 2
    notes = list(args.note)
    if (args.vae / "config.json").is_file() or (args.vae / "vae" / "config.json").is_file():
        generator = f"vae:{args.vae}"
    elif not args.fallback_generator:
        print(
            f"{args.vae}: no VAE there; train one with 'aligngemini generators train-vae' and pass --vae DIR, "
            "or choose another pixel-set generator with --fallback-generator",
            file=sys.stderr,
        )
        return 2
    else:
        generator = args.fallback_generator
        notes.append(
            f"starter VAE not found at {args.vae} (train it with 'aligngemini generators train-vae'); "
            f"the pixel set used {generator} instead"
        )
        print("note:", notes[-1], file=sys.stderr)

    cli = [sys.executable, "-m", "aligngemini.cli", "data"]
    pixel_dir, semantic_dir, report_dir = args.work / "pixel", args.work / "semantic", args.work / "report"
    log: list[dict] = []
    cmd = [
        *cli,
        "build-pixel",
        "--manifest",
        str(args.manifest),
        "--generator",
        generator,
        "--out",
        str(pixel_dir),
        "--crop-size",
        str(args.crop_size),
        "--set",
        f"lowfreq_align_prob={args.lowfreq_align}",
        "--workers",
        str(args.workers),
        "--quiet",
    ]
    if args.limit_pixel:
        cmd += ["--limit", str(args.limit_pixel)]
    _run(cmd, log, args.threads)
    cmd = [
        *cli,
        "build-semantic",
        "--manifest",
        str(args.manifest),
        "--out",
        str(semantic_dir),
        "--size-range",
        *map(str, args.size_range),
        "--jpeg-range",
        *map(str, args.jpeg_range),
        "--balance",
        args.balance,
        "--min-downscale",
        str(args.min_downscale),
        "--workers",
        str(args.workers),
        "--quiet",
    ]
    if args.semantic_vae and generator.startswith("vae:"):
        cmd += ["--vae", generator]
    if args.limit_semantic:
        cmd += ["--limit", str(args.limit_semantic)]
    _run(cmd, log, args.threads)
    cmd = [
        *cli,
        "audit",
        "--pixel-set",
        str(pixel_dir),
        "--semantic-set",
        str(semantic_dir),
        "--report",
        str(report_dir),
        "--content-manifest",
        str(args.manifest),
        "--probe-steps",
        str(args.probe_steps),
        "--max-images",
        str(args.max_images),
        "--quiet",
    ]
    _run(cmd, log, args.threads)

    report = json.loads((report_dir / "report.json").read_text())
    builds = {
        name: json.loads((d / "build_report.json").read_text())
        for name, d in (("pixel", pixel_dir), ("semantic", semantic_dir))
    }
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs ({platform.platform()}), python {platform.python_version()}",
        "generator": generator,
        "notes": notes,
        "corpus": corpus_counts(args.manifest),
        "commands": log,
        "builds": builds,
        "audit": report,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md = [
        f"# {args.tag}",
        "",
        f"Machine: {result['machine']}. Generator for the pixel set: `{generator}`.",
        "",
    ]
    md += [f"- note: {n}" for n in notes]
    md += ["", "Commands:", "", "```"] + [f"{c['command']}   # {c['seconds']} s" for c in log] + ["```", ""]
    md += ["## Corpus", ""]
    for split, by_label in result["corpus"]["by_split_label_source"].items():
        for label, sources in by_label.items():
            md.append(f"- {split} / {label}: " + ", ".join(f"{s} {n}" for s, n in sources.items()))
    md += ["", (report_dir / "report.md").read_text()]
    (RESULTS / f"{args.tag}.md").write_text("\n".join(md), encoding="utf-8")
    print(f"wrote {RESULTS / (args.tag + '.json')} and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
