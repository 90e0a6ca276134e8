"""Every command's ``--help`` teaches, with one vocabulary across commands."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator

import pytest

from aligngemini.cli import HelpFormatter, build_parser


def _walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(command path, parser) for the top level and every command and group under it."""
    yield " ".join(path) or "aligngemini", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


PARSERS = dict(_walk(build_parser()))
COMMANDS = sorted(PARSERS)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: a for a in parser._actions for flag in a.option_strings}


def test_the_walk_sees_every_command_and_group() -> None:
    for name in ("detect", "info", "fetch", "eval", "calibrate", "serve", "train", "data", "data fetch-starter",
                 "data build-pixel", "data build-semantic", "data audit", "generators", "generators train-vae",
                 "generators reconstruct"):  # fmt: skip
        assert name in PARSERS


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_examples(command: str) -> None:
    assert "\nexamples:\n" in PARSERS[command].format_help()


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_no_markup_or_default_noise(command: str) -> None:
    text = PARSERS[command].format_help()
    assert "``" not in text
    assert "default: None" not in text


@pytest.mark.parametrize("command", COMMANDS)
def test_every_argument_has_help(command: str) -> None:
    skip = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
    missing = [a.option_strings or a.dest for a in PARSERS[command]._actions
               if not isinstance(a, skip) and not (a.help or "").strip()]  # fmt: skip
    assert not missing, f"{command}: arguments without help: {missing}"


@pytest.mark.parametrize("command", COMMANDS)
def test_one_vocabulary(command: str) -> None:
    opts = _options(PARSERS[command])
    if "--batch" in opts:
        assert "--batch-size" in opts and opts["--batch"] is opts["--batch-size"], command
    for spelling in ("--quiet", "--no-progress"):
        if spelling in opts:
            assert "-q" in opts and opts[spelling] is opts["-q"], command
            assert opts["-q"].dest == "quiet", command


@pytest.mark.parametrize("command", ["detect", "eval", "scan", "serve"])
def test_commands_that_score_take_one_dtype_option(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    option = _options(PARSERS[command])["--dtype"]
    from aligngemini.branches.precision import DTYPES

    assert option.choices is not None and set(option.choices) == set(
        DTYPES
    )  # the CLI names what parse_dtype takes
    assert "precision: bf16" in option.help  # says why an fp32 run may still compute in bf16
    with pytest.raises(SystemExit) as exc:
        PARSERS[command].parse_args(["x", "--dtype", "int8"] if command != "serve" else ["--dtype", "int8"])
    assert exc.value.code == 2 and "--dtype: invalid choice: 'int8'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "calibrate", "train", "data fetch-starter", "data build-pixel",
                                     "data build-semantic", "data audit", "generators reconstruct"])  # fmt: skip
def test_commands_with_progress_bars_take_quiet(command: str) -> None:
    opts = _options(PARSERS[command])
    assert "-q" in opts and "--quiet" in opts


@pytest.mark.parametrize("command", COMMANDS)
def test_one_formatter_and_wrapped_descriptions(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    parser = PARSERS[command]
    assert parser.formatter_class is HelpFormatter
    # descriptions written on one line are wrapped; only laid-out epilog examples may run a little long
    longest = max(parser.format_help().splitlines(), key=len)
    assert len(longest) <= 130, f"{command}: {longest!r}"


def test_help_formatter_wraps_one_line_paragraphs_and_keeps_layout() -> None:
    fmt = HelpFormatter("prog", width=40)
    text = "word " * 20 + "\n\nexamples:\n  prog --a    " + "x" * 50 + "\n"
    out = fmt._fill_text(text, 40, "")
    prose, layout = out.split("\n\n")
    assert all(len(line) <= 40 for line in prose.splitlines()) and len(prose.splitlines()) > 1
    assert layout == "examples:\n  prog --a    " + "x" * 50 + "\n"


def test_aliases_parse_to_the_same_dest() -> None:
    parser = build_parser()
    recon = ["generators", "reconstruct", "in.png", "-g", "vae:v", "--out", "o"]
    assert parser.parse_args([*recon, "--batch", "2"]).batch_size == 2
    assert parser.parse_args([*recon, "--batch-size", "3"]).batch_size == 3
    assert parser.parse_args(recon).batch_size == 4
    assert parser.parse_args([*recon, "-q"]).quiet is True
    train_vae = ["generators", "train-vae", "--images", "i", "--out", "o"]
    assert parser.parse_args([*train_vae, "--batch", "5"]).batch_size == 5
    assert parser.parse_args(train_vae).batch_size == 8
    for flag in ("-q", "--quiet", "--no-progress"):
        assert parser.parse_args(["data", "fetch-starter", flag]).quiet is True
        assert parser.parse_args(["detect", "x.png", flag]).quiet is True
    assert parser.parse_args(["data", "fetch-starter"]).quiet is False
    assert parser.parse_args(["eval", "d", "--report", "r", "-q"]).quiet is True
    assert parser.parse_args(["calibrate", "d", "--out", "o", "-q"]).quiet is True
    assert parser.parse_args(["data", "audit", "--report", "r", "-q"]).quiet is True
    build = ["data", "build-pixel", "--out", "o", "--generator", "vae:v", "-q"]
    assert parser.parse_args(build).quiet is True
    assert parser.parse_args(["train", "r.yaml", "-q"]).quiet is True


def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from aligngemini.cli import build_parser\n"
        "build_parser().format_help()\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'diffusers', 'open_clip') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == ""
