"""Every input that once made a parser crash (``tests/fuzz_corpus/TARGET/``) is refused cleanly now: the
fuzz targets of ``tests/fuzz_targets.py`` replayed on them. ``benchmarks/fuzz.py`` finds new ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz_targets import TARGETS, seed_inputs

CORPUS = Path(__file__).parent / "fuzz_corpus"
CASES = sorted(p for p in CORPUS.glob("*/*") if p.is_file())


def test_the_corpus_covers_known_targets_only() -> None:
    assert CASES, "the regression corpus is empty"
    assert {p.parent.name for p in CASES} <= set(TARGETS)


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_input_that_once_crashed_is_handled(case: Path) -> None:
    TARGETS[case.parent.name](case.read_bytes())


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_seed_inputs_pass(target: str) -> None:
    for data in seed_inputs(target):
        TARGETS[target](data)
