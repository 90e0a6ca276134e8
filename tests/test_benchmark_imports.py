"""Every script under benchmarks/ still imports: a script is run by hand, rarely, so an import of a function
that was since moved or removed would otherwise be found only by the next person who needs its numbers."""

from __future__ import annotations

import pytest
from benchmark_scripts import BENCHMARKS, load_benchmark

SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py"))
HELPERS = {"record_header", "shipped_semantic"}  # modules the scripts share, not scripts


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_imports_and_has_an_entry_point(name: str) -> None:
    module = load_benchmark(name)
    if name not in HELPERS:
        assert callable(getattr(module, "main", None)), f"benchmarks/{name}.py has no main()"
