"""``aligngemini scan``: judge millions of images into a store that survives crashes, each content once,
on one machine (``--engine local``) or a Ray cluster (``--engine ray``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aligngemini.cli import add_compile, add_dtype, add_provenance, add_quiet, read_trust_anchors

NAMED_SKIPS = 20

SCAN_EPILOG = """\
sources:
  folders (searched recursively; images found by content), glob patterns, file lists (.txt/.lst: one
  path per line), Parquet or CSV listings (.parquet/.csv: a 'path' column, else the first column); each
  local or an fsspec URI (s3://, gs://, ...) you have credentials for. Relative paths in a listing are
  relative to the listing's folder.

results:
  RESULTS is a folder: scan.sqlite (local engine) or shards/*.parquet + meta.json (Ray engine). Every
  input gets one record (detect's schema, plus sha256 and duplicate_of). Content already scored with the
  same bundle is never scored again: a byte-identical copy gets the first record, with duplicate_of.
  Run the same command again after a crash or kill -9: only what is missing is scored.

exit status: 0 the scan finished (unreadable inputs are results with "error"); 2 usage error or
nothing to scan; 1 the scan stopped on an unexpected error (run it again to resume).

examples:
  aligngemini scan photos/ --out scan1/                          one machine, resumable
  aligngemini scan listing.parquet --out s3scan/ --engine ray    on a Ray cluster (RAY_ADDRESS) or a local one
  aligngemini scan --summary scan1/                              counts; --format json for scripts
  aligngemini scan --export scan1/ -o verdicts.parquet           one record per input (.jsonl/.csv/.parquet)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scan",
        help="judge millions of images, resumably and each content once (local or on Ray)",
        description="Scan folders or listings into a crash-proof RESULTS store; read it back with --summary "
        "or --export.",
        epilog=SCAN_EPILOG,
    )
    p.add_argument(
        "sources", nargs="*", metavar="SOURCE", help="folders, globs, file lists, Parquet/CSV listings"
    )
    p.add_argument(
        "--out", type=Path, metavar="RESULTS", help="results folder (created; an existing one is resumed)"
    )
    p.add_argument(
        "--summary", type=Path, metavar="RESULTS", help="print the counts of a scan's results and exit"
    )
    p.add_argument(
        "--export", type=Path, metavar="RESULTS", help="write one record per input to -o FILE and exit"
    )
    p.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="--export's file: .jsonl, .csv or .parquet"
    )
    p.add_argument("--overwrite", action="store_true", help="let --export replace an existing file")
    p.add_argument(
        "--format", choices=("table", "json"), default="table", help="--summary's form (default: table)"
    )
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: Ray Data, on the cluster at RAY_ADDRESS or a local one")  # fmt: skip
    p.add_argument("--actors", type=int, default=None,
                   help="Ray: scoring actors, one detector each (default: one per GPU, else 1)")  # fmt: skip
    p.add_argument(
        "--bundle", "-b", default="starter", help="bundle name, folder or archive (default: starter)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per model batch (default: 16)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if available)")
    add_dtype(p)
    p.add_argument("--log-every", type=float, default=30.0, metavar="SECONDS",
                   help="when stderr is not a terminal, one progress line this often (default: 30)")  # fmt: skip
    add_provenance(p)
    add_compile(p)
    add_quiet(p)
    p.set_defaults(func=run_scan)


def _say(message: str) -> None:
    print(f"aligngemini scan: {message}", file=sys.stderr, flush=True)


def run_scan(args: argparse.Namespace) -> int:
    from aligngemini.scan.store import StoreError, open_results

    modes = [m for m in ("out", "summary", "export") if getattr(args, m) is not None]
    if len(modes) != 1:
        _say("give exactly one of --out RESULTS (scan), --summary RESULTS or --export RESULTS")
        return 2
    try:
        if args.summary is not None or args.export is not None:
            return _read_back(args, open_results(args.summary or args.export))
        return _scan(args)
    except StoreError as exc:
        _say(str(exc))
        return 2


def _read_back(args: argparse.Namespace, store: Any) -> int:
    from aligngemini.scan.report import export, render_summary, summarize

    try:
        if args.summary is not None:
            s = summarize(store)
            sys.stdout.write(json.dumps(s) + "\n" if args.format == "json" else render_summary(s))
            return 0
        if args.output is None:
            _say("--export needs -o FILE (.jsonl, .csv or .parquet)")
            return 2
        try:
            n = export(store, args.output, overwrite=args.overwrite)
        except ValueError as exc:
            _say(str(exc))
            return 2
        _say(f"{n} records written to {args.output}")
        return 0
    finally:
        store.close()


def _scan(args: argparse.Namespace) -> int:
    from aligngemini.bundle import BundleError, load_bundle
    from aligngemini.resolve import ResolveError
    from aligngemini.scan.sources import SourceError

    if not args.sources:
        _say("name at least one SOURCE to scan (a folder, glob, file list or listing)")
        return 2
    if args.batch_size < 1 or (args.actors is not None and args.actors < 1):
        _say("--batch-size and --actors must be at least 1")
        return 2
    if args.engine == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            _say("--engine ray needs Ray Data: pip install 'aligngemini[ray]' (or 'ray[data]')")
            return 2
    try:
        anchors = read_trust_anchors(args.trust_anchors)
        bundle = load_bundle(args.bundle)
    except (BundleError, ResolveError, ValueError) as exc:
        _say(f"{exc}")
        return 2
    skipped: list[tuple[str, str]] = []

    def skip(path: str, why: str) -> None:
        if len(skipped) < NAMED_SKIPS:
            _say(f"skipped {path}: {why}")
        skipped.append((path, why))

    t0 = time.monotonic()
    try:
        if args.engine == "ray":
            from aligngemini.scan.ray_engine import plan_ray, run_ray

            plan = plan_ray(args.out, args.sources, bundle.bundle_id, on_skip=skip)
        else:
            plan = _plan_local(args.out, args.sources, bundle.bundle_id, skip)
    except SourceError as exc:
        _say(str(exc))
        return 2
    if len(skipped) > NAMED_SKIPS:
        _say(f"... and {len(skipped) - NAMED_SKIPS} more file(s) that are not images")
    _say(f"{plan['planned']} input(s) planned ({plan['done']} already done, {plan['pending']} to scan) "
         f"in {time.monotonic() - t0:.1f} s")  # fmt: skip
    if plan["planned"] == 0 or plan["pending"] == 0:
        plan["store"].close()
        if plan["planned"] == 0:
            _say("nothing to scan: no source named an image")
            return 2
        _say(f"every input already has a result in {args.out}; see --summary")
        return 0

    from aligngemini.progress import silence_library_bars
    from aligngemini.scan.progress import Progress, Tally

    if args.quiet:
        silence_library_bars()
    tally = Tally()
    progress = Progress(plan["pending"], quiet=args.quiet, every=args.log_every)
    detector_args = {"bundle": args.bundle, "device": args.device, "dtype": args.dtype,
                     "provenance": args.provenance, "trust_anchors": anchors,
                     "compile_mode": args.compile_mode}  # fmt: skip

    def on_block(records: list[dict[str, Any]]) -> None:
        for rec in records:
            tally.add(rec)
        progress.update(len(records))

    try:
        if args.engine == "ray":
            run_ray(plan, detector_args, actors=args.actors, batch_size=args.batch_size, on_block=on_block)
        else:
            _run_local(plan, detector_args, args.batch_size, on_block)
    except (BundleError, ResolveError) as exc:
        _say(f"cannot load bundle {args.bundle!r}: {exc}")
        return 2
    finally:
        seconds = progress.close()
        _finish(plan["store"], seconds)
    _say(tally.line(seconds))
    return 0


def _plan_local(out: Path, sources: list[str], bundle_id: str, skip: Any) -> dict[str, Any]:
    from aligngemini.scan.sources import iter_sources
    from aligngemini.scan.store import SQLiteStore, StoreError, check_meta, engine_of

    if engine_of(out) == "ray":
        raise StoreError(f"{out} holds a Ray scan; continue it with --engine ray, or scan into another --out")
    store = SQLiteStore(out, create=True)
    meta = store.meta()
    check_meta(meta, bundle_id, out)
    if not meta:
        store.set_meta(engine="local", bundle_id=bundle_id, created=datetime.now(UTC).isoformat(timespec="seconds"),
                       runs=0, seconds=0.0)  # fmt: skip
    store.set_meta(sources=sorted(set(meta.get("sources", [])) | set(sources)))
    store.add_inputs(iter_sources(sources, on_skip=skip))
    planned, done = store.count_inputs(), store.count_done()
    return {"store": store, "planned": planned, "done": done, "pending": planned - done}


def _run_local(plan: dict[str, Any], detector_args: dict[str, Any], batch_size: int, on_block: Any) -> None:
    from aligngemini.detector import Detector
    from aligngemini.scan.local import run_local

    detector = Detector.load(**detector_args)
    run_local(plan["store"], detector, batch_size=batch_size, on_block=on_block)


def _finish(store: Any, seconds: float) -> None:
    meta = store.meta()
    store.set_meta(
        runs=int(meta.get("runs", 0)) + 1, seconds=round(float(meta.get("seconds", 0.0)) + seconds, 1)
    )
    store.close()
