"""The `aligngemini` command through its entry point and through main()."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_decode import _png_header_only

from aligngemini.cli import main


@pytest.fixture()
def mixed_folder(tmp_path: Path) -> Path:
    root = tmp_path / "mixed"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(["a.jpg", "sub/b.png", "c.webp"]):
        Image.fromarray(rng.integers(0, 255, (50 + 10 * i, 70, 3), dtype=np.uint8)).save(root / name)
    good = (root / "a.jpg").read_bytes()
    (root / "corrupt.jpg").write_bytes(good[: len(good) // 3])
    (root / "notes.jpg").write_text("this is a text file with an image name\n")
    (root / "notes.txt").write_text("a note\n")
    (root / "bomb.png").write_bytes(_png_header_only(30000, 30000))
    buf = io.BytesIO()  # an image stored under its content hash, no suffix (as crawls and object stores do)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(buf, format="JPEG")
    (root / "sub" / "3f9a0c1e7b").write_bytes(buf.getvalue())
    return root


def _records(text: str) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in map(json.loads, text.strip().splitlines())}


def test_entry_point_mixed_folder_reports_each_and_exits_1(mixed_folder: Path, tiny_bundle_dir: Path) -> None:
    exe = shutil.which("aligngemini", path=os.path.dirname(sys.executable)) or "aligngemini"
    proc = subprocess.run(
        [exe, "detect", str(mixed_folder), "--bundle", str(tiny_bundle_dir), "--format", "jsonl", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    recs = _records(proc.stdout)
    # images are found by content: the hash-named JPEG is scored, the text files are named as skipped
    assert set(recs) == {"a.jpg", "b.png", "c.webp", "3f9a0c1e7b", "corrupt.jpg", "bomb.png"}
    for name in ("a.jpg", "b.png", "c.webp", "3f9a0c1e7b"):
        r = recs[name]
        assert r["error"] is None and r["verdict"] in ("real", "fake", "uncertain")
        assert set(r["branches"]) == {"pixel", "semantic"}
        assert set(r["branches"]["pixel"]) == {"p_fake", "fake"}
    assert "corrupt or truncated" in recs["corrupt.jpg"]["error"]
    assert (
        "30000x30000" in recs["bomb.png"]["error"]
        and "exceeds the limit of 64000000" in recs["bomb.png"]["error"]
    )
    assert all(recs[n]["p_fake"] is None for n in ("corrupt.jpg", "bomb.png"))
    assert all(
        recs[n]["branches"]["semantic"] == {"p_fake": None, "fake": None} for n in ("corrupt.jpg", "bomb.png")
    )
    for name in ("notes.jpg", "notes.txt"):
        assert f"skipped {mixed_folder / name}: not an image" in proc.stderr
    assert "2 file(s) skipped as not images (see above)" in proc.stderr
    assert "2 of 6 input(s) could not be read" in proc.stderr


def test_a_file_named_explicitly_is_always_reported(
    mixed_folder: Path, tiny_bundle_dir: Path, capsys
) -> None:
    notes = mixed_folder / "notes.jpg"
    assert (
        main(["detect", str(notes), "--bundle", str(tiny_bundle_dir), "--format", "jsonl", "--device", "cpu"])
        == 1
    )
    (rec,) = map(json.loads, capsys.readouterr().out.splitlines())
    assert rec["path"] == str(notes) and "not a recognised image format" in rec["error"]


@pytest.mark.parametrize("what", ["glob", "empty folder", "empty stdin"])
def test_nothing_to_score_exits_2_before_loading_the_bundle(
    what: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def no_load(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("the bundle was loaded although there was nothing to score")

    monkeypatch.setattr("aligngemini.detector.Detector.load", no_load)
    (tmp_path / "empty").mkdir()
    item = {"glob": str(tmp_path / "*.png"), "empty folder": str(tmp_path / "empty"), "empty stdin": "-"}[
        what
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["detect", item, "--format", "jsonl"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    name = "standard input" if what == "empty stdin" else item
    assert f"{name}" in captured.err and "matched no file" in captured.err
    assert "nothing to score" in captured.err


def test_an_input_that_matches_nothing_beside_others_is_named_and_exits_1(
    tmp_path: Path, tiny_bundle_dir: Path, capsys
) -> None:
    img = tmp_path / "one.png"
    Image.new("RGB", (40, 40), (10, 200, 30)).save(img)
    typo = str(tmp_path / "*.jgp")
    assert (
        main(
            [
                "detect",
                str(img),
                typo,
                "--bundle",
                str(tiny_bundle_dir),
                "--format",
                "jsonl",
                "--device",
                "cpu",
            ]
        )
        == 1
    )
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1
    assert f"{typo}: matched no file" in captured.err


def test_formats_and_exit_zero(tmp_path: Path, tiny_bundle_dir: Path, capsys) -> None:
    img = tmp_path / "one.png"
    Image.new("RGB", (40, 40), (10, 200, 30)).save(img)
    args = ["detect", str(img), "--bundle", str(tiny_bundle_dir), "--device", "cpu"]
    assert main([*args, "--format", "json"]) == 0
    arr = json.loads(capsys.readouterr().out)
    assert len(arr) == 1 and arr[0]["path"] == str(img)
    assert main([*args, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["verdict"] == arr[0]["verdict"]
    assert float(rows[0]["p_fake"]) == pytest.approx(arr[0]["p_fake"])
    assert main([*args, "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["path", "verdict", "p_fake"]
    assert arr[0]["verdict"] in table.splitlines()[1]


def test_stdin_output_file_resume_and_no_overwrite(
    tmp_path: Path, tiny_bundle_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    paths = []
    for i in range(4):
        p = tmp_path / f"i{i}.png"
        Image.new("RGB", (36, 36), (i * 60, 0, 0)).save(p)
        paths.append(str(p))
    out = tmp_path / "out.jsonl"
    base = ["--bundle", str(tiny_bundle_dir), "--device", "cpu", "--format", "jsonl", "-o", str(out)]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(paths[:2]) + "\n"))
    assert main(["detect", "-", *base]) == 0
    assert [json.loads(x)["path"] for x in out.read_text().splitlines()] == paths[:2]

    assert main(["detect", *paths, *base]) == 2  # exists: refused, nothing lost
    assert "exists" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 2

    assert main(["detect", *paths, *base, "--resume"]) == 0  # continues: only the 2 new paths are scored
    assert [json.loads(x)["path"] for x in out.read_text().splitlines()] == paths


KILLING_LAUNCHER = """\
import os, signal, sys
import aligngemini.cli.detect as commands

kill_at, torn = int(os.environ["KILL_AT"]), os.environ.get("TORN") == "1"
written = 0
original = commands._append_line

def append_then_die(out, line):
    global written
    if written == kill_at:
        if torn:  # the record is half on disk when the process dies
            out.write(line[: len(line) // 2])
            out.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    original(out, line)
    written += 1

commands._append_line = append_then_die
from aligngemini.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_kill_9_scores_every_input_exactly_once(tmp_path: Path, tiny_bundle_dir: Path) -> None:
    """SIGKILL between records, in the middle of writing one, and before the first: each resumed run scores
    only what is missing, and the final file has every input once, every line whole."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")  # errors count as done too
    launcher = tmp_path / "launch.py"
    launcher.write_text(KILLING_LAUNCHER)
    out = tmp_path / "out.jsonl"
    args = ["detect", str(folder), "--bundle", str(tiny_bundle_dir), "--device", "cpu", "--batch-size", "4",
            "-q", "-f", "jsonl", "-o", str(out), "--resume"]  # fmt: skip
    lines_before = 0
    for kill_at, torn in ((5, False), (3, True), (0, True)):
        env = {**os.environ, "KILL_AT": str(kill_at), "TORN": "1" if torn else "0"}
        proc = subprocess.run([sys.executable, str(launcher), *args], env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert proc.returncode == -9, proc.stderr  # killed, as planned
        whole = out.read_bytes().rsplit(b"\n", 1)[0].splitlines() if out.exists() else []
        assert len(whole) == lines_before + kill_at  # nothing already written was lost
        lines_before = len(whole)
    proc = subprocess.run([sys.executable, str(launcher), *args], env={**os.environ, "KILL_AT": "-1"},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # broken.jpg could not be read
    assert "dropping an unfinished last line" in proc.stderr
    text = out.read_text()
    assert text.endswith("\n")
    paths = [json.loads(line)["path"] for line in text.splitlines()]
    assert sorted(paths) == sorted(str(p) for p in folder.iterdir()) and len(paths) == len(set(paths)) == 25


def test_usage_errors_exit_2(tiny_bundle_dir: Path, capsys) -> None:
    assert main(["detect", "x.png", "--bundle", "no-such-bundle"]) == 2
    assert "cannot load bundle" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["detect"])
    assert info.value.code == 2
    assert main([]) == 2


def test_info_describes_the_bundle(tiny_bundle_dir: Path, capsys) -> None:
    assert main(["info", str(tiny_bundle_dir)]) == 0
    text = capsys.readouterr().out
    assert "pixel-timm" in text and "semantic-clip" in text and "sha256:" in text
    assert main(["info", str(tiny_bundle_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["branches"]["pixel"]["family"] == "pixel-timm"


def test_help_teaches() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aligngemini.cli", "detect", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert "examples:" in proc.stdout and "--resume" in proc.stdout and "exit status" in proc.stdout


def test_assemble_from_training_outputs(tmp_path: Path, tiny_bundle_dir: Path, capsys) -> None:
    """Two 'aligngemini train' output folders (export section + branch/ files) become one working bundle."""
    cfg = json.loads((tiny_bundle_dir / "config.json").read_text())
    runs = {}
    for role, section in cfg["branches"].items():
        run = tmp_path / f"run-{role}"
        (run / "branch").mkdir(parents=True)
        for src in tiny_bundle_dir.rglob("*"):
            rel = src.relative_to(tiny_bundle_dir)
            if src.is_file() and rel.parts[0] in json.dumps(section):  # the files this branch names
                dst = run / "branch" / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        (run / "train_summary.json").write_text(json.dumps({"export": section}))
        runs[role] = run
    out = tmp_path / "assembled"
    args = ["assemble", "--pixel", str(runs["pixel"]), "--semantic", str(runs["semantic"]), "--out", str(out)]
    assert main(args) == 0
    assert "wrote bundle 'assembled'" in capsys.readouterr().out
    assert main(args) == 2  # no silent overwrite
    assert "not empty" in capsys.readouterr().err
    from aligngemini import Detector

    det = Detector.load(out, device="cpu")
    ref = Detector.load(tiny_bundle_dir, device="cpu")
    img = Image.new("RGB", (48, 40), (120, 30, 200))
    assert det.predict(img)[0].to_dict()["branches"] == ref.predict(img)[0].to_dict()["branches"]
    assert main(["assemble", "--out", str(tmp_path / "x")]) == 2
    # --set changes an inference setting of one branch's section and nothing else
    phased = tmp_path / "phased"
    assert main([*args[:-1], str(phased), "--set", "pixel.crop.phases=4"]) == 0
    got = json.loads((phased / "config.json").read_text())["branches"]
    assert got["pixel"]["crop"] == {**cfg["branches"]["pixel"]["crop"], "phases": 4}
    assert got["semantic"] == cfg["branches"]["semantic"]
    assert Detector.load(phased, device="cpu").branches["pixel"].crop.phases == 4
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "y"), "--set", "vlm.x=1"]) == 2
    assert "must start with a branch given here (pixel, semantic)" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "y"), "--set", "pixel.crop.phases=3"]) == 2
    assert "crop.phases must be one of (1, 4)" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "y"), "--set", "pixel.crop.phase=4"]) == 2  # a typo
    assert "phase" in capsys.readouterr().err and not (tmp_path / "y").exists()
    assert main([*args[:-1], str(tmp_path / "y"), "--set", "pixel.precision=fp8"]) == 2
    assert "precision 'fp8' is unknown" in capsys.readouterr().err and not (tmp_path / "y").exists()
