"""benchmarks/throughput_pairs.py: variant parsing, the rotation of who runs first, and the medians it reports
(throughput.py itself replaced by records made up here)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from benchmark_scripts import load_benchmark

tp = load_benchmark("throughput_pairs")


def test_variant_holds_environment_and_bundle() -> None:
    assert tp.parse_variant("a") == ("a", {}, None, [])
    assert tp.parse_variant("old:bundle=/tmp/b,ALIGNGEMINI_MALLOC=system") == (
        "old",
        {"ALIGNGEMINI_MALLOC": "system"},
        "/tmp/b",
        [],
    )
    assert tp.parse_variant("c:--compile=default,--dtype=bf16,K=v") == (
        "c",
        {"K": "v"},
        None,
        ["--compile", "default", "--dtype", "bf16"],
    )
    for bad in (":X=1", "a:X", "a:=1"):
        with pytest.raises(argparse.ArgumentTypeError):
            tp.parse_variant(bad)


def test_refuses_one_variant_or_a_bundle_after_the_separator() -> None:
    with pytest.raises(SystemExit):
        tp.parse_args(["--variant", "a"])
    with pytest.raises(SystemExit):
        tp.parse_args(["--variant", "a", "--variant", "a:X=1"])
    with pytest.raises(SystemExit):
        tp.parse_args(["--variant", "a", "--variant", "b", "--", "--bundle", "x"])


def test_rounds_rotate_the_first_variant_and_report_medians(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, dict[str, str], str | None, list[str], list[str]]] = []
    speeds = {"fast": iter([10.0, 12.0, 11.0]), "slow": iter([9.0, 8.0, 7.5])}

    def fake_run(
        name: str,
        env: dict[str, str],
        bundle: str | None,
        arguments: list[str],
        passed: list[str],
        tmp: Path,
        i: int,
    ) -> Any:
        calls.append((name, env, bundle, arguments, passed))
        e2e = next(speeds[name])
        return {"images_per_s": {"end_to_end": e2e, "models": e2e + 1},
                "models_per_branch_images_per_s": {"semantic": 12.0}, "load_avg_at_start": 0.5}  # fmt: skip

    monkeypatch.setattr(tp, "run_once", fake_run)
    out = tmp_path / "pairs"
    argv = ["--variant", "fast", "--variant", "slow:bundle=/b,K=v,--compile=default", "--rounds", "3", "--out", str(out),
            "--", "--images", "8"]  # fmt: skip
    assert tp.main(argv) == 0
    assert [c[0] for c in calls] == ["fast", "slow", "slow", "fast", "fast", "slow"]
    assert calls[1][1:] == ({"K": "v"}, "/b", ["--compile", "default"], ["--images", "8"])
    record = json.loads(out.with_suffix(".json").read_text())
    e2e = record["summary"]["end to end"]
    assert e2e["fast"]["median"] == 11.0 and e2e["slow"]["median"] == 8.0
    assert (e2e["slow"]["min"], e2e["slow"]["max"]) == (7.5, 9.0)
    assert "pixel alone" not in record["summary"]  # no run timed a pixel branch
    table = out.with_suffix(".md").read_text()
    assert "| end to end | 11.00 (10.00-12.00) | 8.00 (7.50-9.00) |" in table
    assert "K=v, --compile default, bundle /b" in table
