"""``aligngemini detect``: judge images with a bundle, in every output format, resumably."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from aligngemini.cli import add_compile, add_dtype, add_provenance, read_trust_anchors
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
  aligngemini detect downloads/ --provenance override   # a signed C2PA claim of AI generation decides
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
    add_dtype(p)
    p.add_argument(
        "--only", choices=("pixel", "semantic"), action="append", help="use only this branch (repeatable)"
    )
    p.add_argument(
        "--max-pixels", type=int, default=None, help="refuse images with more decoded pixels (default: 64M)"
    )
    p.add_argument("-q", "--quiet", "--no-progress", dest="quiet", action="store_true",
                   help="no progress bars on stderr (ours and the model libraries'); messages still print")  # fmt: skip
    add_provenance(p)
    add_compile(p)
    p.set_defaults(func=run_detect)


# -- detect ------------------------------------------------------------------------------------
@dataclass
class _Expansion:
    """What the inputs named: files to score, files skipped as not images, inputs that matched nothing."""

    paths: list[str] = field(default_factory=list)
    not_images: list[tuple[str, str]] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)


def _expand_inputs(items: list[str]) -> _Expansion:
    from aligngemini.decode import iter_image_paths

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

    from aligngemini.bundle import BundleError
    from aligngemini.decode import DEFAULT_MAX_PIXELS
    from aligngemini.detector import Detector
    from aligngemini.progress import silence_library_bars
    from aligngemini.record import Verdict, render_table
    from aligngemini.resolve import ResolveError

    if args.quiet:
        silence_library_bars()
    try:
        anchors = read_trust_anchors(args.trust_anchors)
    except ValueError as exc:
        _say(str(exc))
        return 2
    try:
        det = Detector.load(args.bundle, device=args.device, dtype=args.dtype, only=args.only,
                            max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, provenance=args.provenance,
                            trust_anchors=anchors, compile_mode=args.compile_mode)  # fmt: skip
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
