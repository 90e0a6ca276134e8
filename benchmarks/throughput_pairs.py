"""Two (or more) ways of running the detector, timed by ``throughput.py`` in alternation.

On a small shared box one run's speed moves by 5-10% from one minute to the next, more than many changes
worth measuring. Timing the variants one right after the other, rotating which goes first, and comparing
their medians over several rounds separates the change from the box's drift.

A variant is ``NAME`` or ``NAME:KEY=VALUE,...``: each KEY=VALUE is set in the environment of its runs, except
``bundle=PATH``, which is passed as ``--bundle``, and ``--OPTION=VALUE``, passed to that variant's runs of
``throughput.py`` as ``--OPTION VALUE``. Arguments after ``--`` go to every run of ``throughput.py``.

    python benchmarks/throughput_pairs.py --variant retain-freed --variant system:ALIGNGEMINI_MALLOC=system \\
        --rounds 5 --out benchmarks/results/throughput_cpu_allocator -- --images 96 --batch-size 16
    python benchmarks/throughput_pairs.py --variant eager --variant compiled:--compile=default \\
        --rounds 4 -- --images 96 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import describe_run, record_header, record_path, write_record  # noqa: E402

THROUGHPUT = Path(__file__).resolve().parent / "throughput.py"
# what each round's table shows of a run's record
COLUMNS = {
    "end to end": ("images_per_s", "end_to_end"),
    "models": ("images_per_s", "models"),
    "pixel alone": ("models_per_branch_images_per_s", "pixel"),
    "semantic alone": ("models_per_branch_images_per_s", "semantic"),
}


def parse_variant(text: str) -> tuple[str, dict[str, str], str | None, list[str]]:
    """``NAME:KEY=VALUE,...`` -> (name, environment, bundle or None, throughput.py arguments)."""
    name, _, rest = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"variant {text!r} has no name; write NAME or NAME:KEY=VALUE,...")
    env: dict[str, str] = {}
    bundle = None
    arguments: list[str] = []
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise argparse.ArgumentTypeError(f"variant {text!r}: {item!r} is not KEY=VALUE")
        if key == "bundle":
            bundle = value
        elif key.startswith("--"):
            arguments += [key, value]
        else:
            env[key] = value
    return name, env, bundle, arguments


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    passed = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", type=parse_variant, action="append", required=True,
                   help="NAME or NAME:KEY=VALUE,... (environment settings; bundle=PATH for --bundle; "
                        "--OPTION=VALUE for an argument of throughput.py); "
                        "give two or more")  # fmt: skip
    p.add_argument("--rounds", type=int, default=5, help="each variant runs once per round (default 5)")
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    p.add_argument("--machine", default="2-core CPU dev box")
    args = p.parse_args(own)
    names = [v[0] for v in args.variant]
    if len(names) < 2 or len(set(names)) != len(names):
        p.error(f"give at least two variants with different names, got {names}")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if any(a in passed for a in ("--out", "--bundle")):
        p.error("--out and --bundle are set per variant; leave them out of the arguments after --")
    return args, passed


def run_once(
    name: str,
    env: dict[str, str],
    bundle: str | None,
    arguments: list[str],
    passed: list[str],
    tmp: Path,
    i: int,
) -> Any:
    out = tmp / f"{name}-{i}"
    cmd = [sys.executable, str(THROUGHPUT), *passed, *arguments, "--out", str(out)]
    if bundle:
        cmd += ["--bundle", bundle]
    print(f"round {i + 1}: {name}", file=sys.stderr, flush=True)
    subprocess.run(cmd, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)
    return json.loads(record_path(out, ".json").read_text())


def column(record: dict[str, Any], key: tuple[str, str]) -> float | None:
    value = record.get(key[0], {}).get(key[1])
    return float(value) if value is not None else None


def main(argv: list[str] | None = None) -> int:
    args, passed = parse_args(argv)
    header = record_header("throughput_pairs", argv, args.machine)
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            k = i % len(args.variant)  # rotate which variant goes first
            order = args.variant[k:] + args.variant[:k]
            rounds.append(
                {
                    name: run_once(name, env, bundle, arguments, passed, Path(tmp), i)
                    for name, env, bundle, arguments in order
                }  # fmt: skip
            )
    names = [v[0] for v in args.variant]
    summary = {}
    for label, key in COLUMNS.items():
        per = {n: [column(r[n], key) for r in rounds] for n in names}
        if all(v is not None for vals in per.values() for v in vals):
            summary[label] = {n: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
                              for n, v in per.items()}  # fmt: skip
    record = {
        **header,
        "variants": {
            n: {"environment": env, "bundle": bundle or "starter", "arguments": arguments}
            for n, env, bundle, arguments in args.variant
        },
        "throughput_arguments": passed,
        "summary": summary,
        "rounds": rounds,
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        write_record(args.out, record, render(record, names))
    return 0


def describe_variant(spec: dict[str, Any]) -> str:
    settings = [f"{k}={v}" for k, v in spec["environment"].items()]
    if spec.get("arguments"):
        settings.append(" ".join(spec["arguments"]))
    return f"{', '.join(settings) or 'no setting'}, bundle {spec['bundle']}"


def render(record: dict[str, Any], names: list[str]) -> str:
    variants = "; ".join(f"`{n}`: {describe_variant(spec)}" for n, spec in record["variants"].items())
    lines = [
        f"# Throughput in alternation: {' against '.join(names)}",
        "",
        describe_run(record) + ".",
        f"Each round runs `python benchmarks/throughput.py {' '.join(record['throughput_arguments'])}` once per "
        f"variant, one right after the other, the first variant rotating. Variants: {variants}.",
        "",
        "| images/s | " + " | ".join(f"{n}, median (range)" for n in names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for label, per in record["summary"].items():
        cells = [f"{per[n]['median']:.2f} ({per[n]['min']:.2f}-{per[n]['max']:.2f})" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Each round, end to end (load average at the start of each run):", "",
              "| round | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]  # fmt: skip
    for i, r in enumerate(record["rounds"], 1):
        cells = [f"{r[n]['images_per_s']['end_to_end']:.2f} ({r[n]['load_avg_at_start']:.2f})" for n in names]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
