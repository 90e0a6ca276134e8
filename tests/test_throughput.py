"""benchmarks/throughput.py end to end on a tiny bundle: every stage timed, the semantic variants named."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import throughput  # noqa: E402


def test_stages_and_semantic_variants_are_recorded(
    tiny_bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv(
        "GOMP_SPINCOUNT", "10000"
    )  # recorded as the run's OpenMP setting (read at torch's load)
    argv = ["--bundle", str(tiny_bundle_dir), "--images", "4", "--batch-size", "2", "--size", "64", "48",
            "--semantic-sizes", "32", "16", "--semantic-merge", "0", "2", "--out", str(tmp_path / "tp")]  # fmt: skip
    assert throughput.main(argv) == 0
    record = json.loads((tmp_path / "tp.json").read_text())
    assert set(record["images_per_s"]) == {"decode", "prepare", "models", "end_to_end"}
    assert all(v > 0 for v in record["images_per_s"].values())
    assert set(record["models_per_branch_images_per_s"]) == {"pixel", "semantic"}
    by_size = record["semantic_branch_images_per_s_by_input_size"]
    assert set(by_size) == {
        "32 px fp32",
        "32 px fp32, 2 pairs merged",
        "16 px fp32",
        "16 px fp32, 2 pairs merged",
    }
    assert record["openmp_wait"] == {"GOMP_SPINCOUNT": "10000"}
    assert "2 pairs merged" in (tmp_path / "tp.md").read_text()


def test_tower_profile_names_where_the_time_goes(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    import tower_profile

    argv = ["--bundle", str(tiny_bundle_dir), "--batch", "2", "--repeats", "1", "--merge", "0", "3",
            "--out", str(tmp_path / "prof")]  # fmt: skip
    assert tower_profile.main(argv) == 0
    record = json.loads((tmp_path / "prof.json").read_text())
    plain, merged = record["by_merge"]["0"], record["by_merge"]["3"]
    assert plain["linear_gflop_per_s"] > 0 and "aten::addmm" in plain["share"]
    shares = list(plain["share"].values())
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.001  # largest first, of the total
    assert merged["gflop_per_image"] < plain["gflop_per_image"]  # merging tokens removes work
    assert len(record["plain_gemm_gflop_per_s"]) == 3
