"""aligngemini.train.run_output: a folder that is not a finished run is refused with a message that says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

from aligngemini.train.run_output import RunOutputError, read_run


def test_a_summary_that_is_not_json_or_has_no_branch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunOutputError, match="not found; give the --output folder of a finished"):
        read_run(tmp_path)
    (tmp_path / "train_summary.json").write_text("{not json")
    with pytest.raises(RunOutputError, match="not readable JSON"):
        read_run(tmp_path)
    (tmp_path / "train_summary.json").write_text(json.dumps({"export": None, "steps": 3}))
    with pytest.raises(RunOutputError, match="no exported branch section; continue it with"):
        read_run(tmp_path)
    (tmp_path / "train_summary.json").write_text(json.dumps({"export": {"family": "pixel-timm"}}))
    run = read_run(str(tmp_path))
    assert run.section == {"family": "pixel-timm"} and run.recipe == {}
    assert run.branch_dir == tmp_path / "branch"


def test_wild_eval_refuses_an_unfinished_pixel_run_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    we = load_benchmark("wild_eval")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(SystemExit) as info:
        we.parse_args(["--pixel-run", str(tmp_path)])
    assert info.value.code == 2
    assert "stopped before it finished" in capsys.readouterr().err
