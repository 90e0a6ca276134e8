"""``aligngemini <command>``: the one command-line entry point.

Each command lives in the module that owns its work and registers itself through ``register(sub)``;
modules keep heavy imports (torch, transformers) inside their handlers so that ``--help`` stays fast.

Help conventions, the same for every command: an ``examples:`` section in the epilog, a one-line help for
every argument that states its default, ``-q, --quiet`` for "no progress bars" (:func:`add_quiet`) and
``--batch-size`` for batch sizes. Every parser is shown with :class:`HelpFormatter`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
from pathlib import Path

from aligngemini.config import COMPILE_MODES

# Top-level commands, by owning module.
COMMAND_MODULES = [
    "aligngemini.cli.detect",  # detect
    "aligngemini.cli.bundles",  # info, fetch, assemble
    "aligngemini.cli.train",  # train
    "aligngemini.cli.evaluate",  # eval, calibrate
    "aligngemini.cli.serve",  # serve
    "aligngemini.cli.scan",  # scan
]
# Command groups: name -> (help, examples epilog, modules registering subcommands into the group).
GROUP_MODULES = {
    "data": (
        "build, fetch and audit training sets",
        """\
examples:
  aligngemini data fetch-starter                                  registry-sourced starter corpus
  aligngemini data build-pixel --generator vae:VAE_DIR --out PIXEL_SET
  aligngemini data build-semantic --vae vae:VAE_DIR --out SEMANTIC_SET
  aligngemini data audit --pixel-set PIXEL_SET --semantic-set SEMANTIC_SET --report AUDIT

Run 'aligngemini data SUBCOMMAND --help' for each subcommand's options.
""",
        ["aligngemini.cli.data"],
    ),
    "generators": (
        "reconstruction generators: train a VAE, reconstruct images",
        """\
examples:
  aligngemini generators train-vae --images photos/ --out VAE_DIR     train a small VAE of our own
  aligngemini generators reconstruct photo.jpg --generator vae:VAE_DIR --out recon/
  aligngemini generators reconstruct photos/ -g esrgan:medium:x2 --out recon/

Run 'aligngemini generators SUBCOMMAND --help' for each subcommand's options.
""",
        ["aligngemini.cli.generators"],
    ),
}

QUIET_HELP = "no progress bars on stderr; messages and results still print"


def add_quiet(parser: argparse.ArgumentParser, *, no_progress_alias: bool = False) -> None:
    """The one "no progress bars" option: ``-q, --quiet`` (dest ``quiet``), plus the older spelling
    ``--no-progress`` as an alias on commands that had it."""
    flags = ["-q", "--quiet"] + (["--no-progress"] if no_progress_alias else [])
    parser.add_argument(*flags, dest="quiet", action="store_true", help=QUIET_HELP)


def add_provenance(parser: argparse.ArgumentParser) -> None:
    """The provenance options, the same on every command that writes records: ``--provenance MODE`` and
    ``--trust-anchors PEM`` (dests ``provenance``, ``trust_anchors``)."""
    parser.add_argument(
        "--provenance", choices=("report", "override", "off"), default="report",
        help="what each file declares about its origin (C2PA, IPTC source type, generator parameters): "
             "'report' shows it beside the verdict (default); 'override' also marks fake a file whose validly "
             "signed C2PA manifest declares AI generation (fired: provenance); 'off' skips reading it",
    )  # fmt: skip
    parser.add_argument(
        "--trust-anchors", type=Path, metavar="PEM", default=None,
        help="PEM file of C2PA trust anchors: signers chaining to one are reported as trusted (default: none, "
             "so a valid signature is reported as valid but untrusted)",
    )  # fmt: skip


def add_compile(parser: argparse.ArgumentParser) -> None:
    """``--compile [MODE]`` (dest ``compile_mode``, None when absent), the same on every command that scores."""
    parser.add_argument(
        "--compile", dest="compile_mode", nargs="?", const="default", default=None,
        choices=COMPILE_MODES, metavar="MODE",
        help="torch.compile the models: faster batches after a warm-up that compiles them (tens of seconds; "
             "each new batch shape compiles once, and torch keeps compiled code on disk for later runs). "
             "MODE: default; reduce-overhead (CUDA graphs on a GPU); max-autotune. "
             "Needs a C++ compiler on a CPU. Off by default",
    )  # fmt: skip


def add_dtype(parser: argparse.ArgumentParser) -> None:
    """``--dtype``, the same on every command that scores."""
    parser.add_argument(
        "--dtype", default=None, metavar="{fp32,bf16,fp16}",
        choices=("fp32", "bf16", "fp16", "float32", "bfloat16", "float16"),
        help="the models' dtype (default: bf16 on cuda, fp32 on cpu). On a CPU with native bf16 (AVX-512 BF16 or "
             "AMX) a branch whose bundle section says precision: bf16 computes in bf16 even at fp32, as the "
             "starter's two branches do; ALIGNGEMINI_BF16=off makes them compute in fp32",
    )  # fmt: skip


def read_trust_anchors(path: Path | None) -> str | None:
    """The text of a --trust-anchors file; raises ValueError naming the file and the fix."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"--trust-anchors {path}: cannot read it ({exc}); give a PEM file of certificates"
        ) from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(
            f"--trust-anchors {path}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)"
        )
    return text


EPILOG = """\
examples:
  aligngemini detect photo.jpg folder/ 'shots/*.png'     judge images with the starter bundle
  aligngemini detect folder/ --format jsonl -o out.jsonl machine-readable, one record per image
  aligngemini scan photos/ --out RESULTS/                millions of images, resumable, each content once
  aligngemini info                                       what the default bundle holds
  aligngemini data fetch-starter                         assemble the registry-sourced corpus
  aligngemini train recipes/pixel-starter.yaml           train a branch from a recipe
  aligngemini eval DATA --report out/                    measure a bundle, write report.json/.md

Run 'aligngemini COMMAND --help' for each command's options.
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written (examples and tables keep their layout), except that a paragraph
    written on one line is wrapped to the terminal width."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for para in text.split("\n\n"):
            if "\n" not in para.strip("\n") and not para.startswith(" ") and len(indent + para) > width:
                para = textwrap.fill(para.strip("\n"), width, initial_indent=indent, subsequent_indent=indent)
            else:
                para = "".join(indent + line for line in para.splitlines(keepends=True))
            paragraphs.append(para)
        return "\n\n".join(paragraphs)


def _use_help_formatter(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every (sub)command parser under it :class:`HelpFormatter`."""
    if parser.formatter_class in (argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter):
        parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in dict.fromkeys(action.choices.values()):
                _use_help_formatter(sp)


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
        "and a semantic branch, fused by the paper's OR rule or a calibrated stacker (the starter's) "
        "(AlignGemini, arXiv 2512.06746).",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    from aligngemini import __version__

    parser.add_argument("--version", action="version", version=f"aligngemini {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        _register(name, sub)
    for group, (help_text, epilog, modules) in GROUP_MODULES.items():
        gp = sub.add_parser(group, help=help_text, description=help_text, epilog=epilog,
                            formatter_class=HelpFormatter)  # fmt: skip
        gsub = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
        gp.set_defaults(func=lambda args, gp=gp: (gp.print_help(sys.stderr), 2)[1])
        for name in modules:
            _register(name, gsub)
    _use_help_formatter(parser)
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
