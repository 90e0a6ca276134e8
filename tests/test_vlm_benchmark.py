"""The GPU benchmark's code path, run on the CPU with its tiny config (so a GPU session does not find a
broken script)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_semantic_benchmark_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_semantic.py"), "--tiny", "--budget-s", "600",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {r["variant"] for r in res["readout"]} >= {"sdpa", "sdpa+grouped-vision", "sdpa, full logits"}
    assert all(r["images_per_s"] > 0 for r in res["readout"] + res["explain"] + res["train"])
    assert res["explain"][0]["new_tokens"] == 4  # the forced explanation length
    assert res["train"] and res["readout_end_to_end"]
    assert res["checks"]["finite_logits"]
    assert res["checks"]["max_abs_p_fake_diff_sdpa+grouped-vision"] < 1e-5
    assert "images/s" in proc.stdout


def test_gpu_semantic_benchmark_refuses_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the refusal path does not apply")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_semantic.py")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr
