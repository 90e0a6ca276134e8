"""``aligngemini scan``: sources, the store, content dedup, resume after kill -9 (both engines), the Ray engine
on a local 2-CPU Ray giving the local engine's records, summary and export."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from aligngemini.cli import main

SCAN = [sys.executable, "-m", "aligngemini", "scan"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 images (two of them byte-identical copies of others), a corrupt one and a text file."""
    root = tmp_path_factory.mktemp("scan-src")
    (root / "sub").mkdir()
    rng = np.random.default_rng(7)
    for i in range(28):
        name = f"sub/img{i:02d}.png" if i % 3 else f"img{i:02d}.jpg"
        Image.fromarray(rng.integers(0, 255, (40 + i, 56, 3), dtype=np.uint8)).save(root / name)
    shutil.copy(root / "img00.jpg", root / "sub" / "copy-of-img00")  # no suffix: found by content
    shutil.copy(root / "sub" / "img01.png", root / "zz-copy.png")
    (root / "broken.jpg").write_bytes((root / "img00.jpg").read_bytes()[:200])
    (root / "notes.txt").write_text("not an image\n")
    return root


def _run_in_group(cmd: list[str], env: dict[str, str] | None = None, timeout: int = 600) -> tuple[int, str]:
    """Run ``cmd`` in its own process group and kill whatever of that group is left when it ends (a killed
    scan's Ray processes): no test leaves a process behind."""
    proc = subprocess.Popen(cmd, env=env or os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode, err


def _export(results: Path, out: Path) -> list[dict]:
    assert main(["scan", "--export", str(results), "-o", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def _image_paths(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*") if p.is_file() and p.name != "notes.txt"}


def test_local_scan_scores_each_content_once_and_reads_back(folder: Path, tiny_bundle_dir: Path, tmp_path: Path,
                                                            capsys) -> None:  # fmt: skip
    results = tmp_path / "r"
    base = [
        "scan",
        str(folder),
        "--out",
        str(results),
        "--bundle",
        str(tiny_bundle_dir),
        "--device",
        "cpu",
        "-q",
    ]
    assert main([*base, "--batch-size", "4"]) == 0
    err = capsys.readouterr().err
    assert "skipped " + str(folder / "notes.txt") in err
    assert "31 inputs" in err and "28 scored, 2 duplicates, 1 errors" in err
    recs = {r["path"]: r for r in _export(results, tmp_path / "all.jsonl")}
    assert set(recs) == _image_paths(folder)
    copy, first = recs[str(folder / "sub" / "copy-of-img00")], recs[str(folder / "img00.jpg")]
    assert copy["duplicate_of"] == str(folder / "img00.jpg") and copy["sha256"] == first["sha256"]
    assert {k: v for k, v in copy.items() if k not in ("path", "duplicate_of")} == {
        k: v for k, v in first.items() if k not in ("path", "duplicate_of")}  # fmt: skip
    assert recs[str(folder / "zz-copy.png")]["duplicate_of"] == str(folder / "sub" / "img01.png")
    assert "Truncated" in recs[str(folder / "broken.jpg")]["error"]

    assert main(base) == 0  # the same command again: nothing left to do
    assert "every input already has a result" in capsys.readouterr().err
    assert main(["scan", "--summary", str(results), "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["results"] == summary["planned_inputs"] == 31 and summary["pending"] == 0
    assert (summary["scored"], summary["duplicates"], summary["errors"]) == (28, 2, 1)
    assert sum(summary["verdicts"].values()) == 30 and summary["runs"] == 1  # runs that scanned
    assert list(summary["errors_by_reason"].values()) == [1]

    with open(_exported(results, tmp_path / "all.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    table = pq.read_table(_exported(results, tmp_path / "all.parquet"))
    assert [r["path"] for r in rows] == table.column("path").to_pylist() == list(recs)
    assert table.schema.field("p_fake").type == pa.float64()
    assert json.loads(table.column("record")[0].as_py()) == recs[rows[0]["path"]]
    assert (
        main(["scan", "--export", str(results), "-o", str(tmp_path / "all.csv")]) == 2
    )  # never overwritten unasked
    assert "pass --overwrite" in capsys.readouterr().err


def _exported(results: Path, out: Path) -> Path:
    assert main(["scan", "--export", str(results), "-o", str(out)]) == 0
    return out


def test_listings_with_missing_files_and_relative_paths(
    folder: Path, tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    names = ["img00.jpg", "sub/img01.png", "gone.png", "img00.jpg"]  # a repeat is scanned once
    listing_dir = tmp_path / "lists"
    listing_dir.mkdir()
    (listing_dir / "l.csv").write_text(
        "id,path\n" + "".join(f"{i},{folder / n}\n" for i, n in enumerate(names))
    )
    pq.write_table(pa.table({"path": [str(folder / "sub" / "img02.png"), str(folder / "absent.jpg")]}),
                   listing_dir / "l.parquet")  # fmt: skip
    shutil.copy(folder / "img03.jpg", listing_dir / "local.jpg")
    (listing_dir / "l.txt").write_text("# one path per line, relative to this file\nlocal.jpg\n")
    results = tmp_path / "r"
    code = main(["scan", str(listing_dir / "l.csv"), str(listing_dir / "l.parquet"), str(listing_dir / "l.txt"),
                 "--out", str(results), "--bundle", str(tiny_bundle_dir), "--device", "cpu", "-q"])  # fmt: skip
    assert code == 0
    recs = {r["path"]: r for r in _export(results, tmp_path / "x.jsonl")}
    assert list(recs) == [str(folder / "img00.jpg"), str(folder / "sub" / "img01.png"), str(folder / "gone.png"),
                          str(folder / "sub" / "img02.png"), str(folder / "absent.jpg"),
                          str(listing_dir / "local.jpg")]  # fmt: skip
    assert recs[str(folder / "gone.png")]["error"] == "no such file"
    assert recs[str(folder / "absent.jpg")]["error"] == "no such file"
    assert recs[str(listing_dir / "local.jpg")]["verdict"] is not None


def test_fsspec_uris_are_sources(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    rng = np.random.default_rng(1)
    for i in range(3):
        with fs.open(f"/bucket/in/{i}.png", "wb") as fh:
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(fh, format="PNG")
    fs.pipe("/bucket/in/readme.md", b"# not an image")
    results = tmp_path / "r"
    assert main(["scan", "memory://bucket/in", "--out", str(results), "--bundle", str(tiny_bundle_dir),
                 "--device", "cpu", "-q"]) == 0  # fmt: skip
    recs = _export(results, tmp_path / "m.jsonl")
    assert [r["path"] for r in recs] == [f"memory:///bucket/in/{i}.png" for i in range(3)]
    assert all(r["verdict"] is not None for r in recs)


def test_usage_errors_exit_2(tiny_bundle_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["scan", str(tmp_path)]) == 2  # no --out
    assert main(["scan", "--summary", str(tmp_path / "none")]) == 2
    assert "holds no scan results" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert (
        main(
            ["scan", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--bundle", str(tiny_bundle_dir)]
        )
        == 2
    )
    assert "nothing to scan" in capsys.readouterr().err
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    assert main(["scan", str(bad), "--out", str(tmp_path / "r2"), "--bundle", str(tiny_bundle_dir)]) == 2
    assert "not a readable Parquet file" in capsys.readouterr().err


# -- kill -9 and resume ---------------------------------------------------------------------------------------
KILLING_LAUNCHER = """\
import os, signal, sys
from aligngemini.scan import store

kill_at, where = int(os.environ["KILL_AT"]), os.environ["KILL_WHERE"]
count = {"n": 0}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

for cls in (store.SQLiteStore, store.ShardStore):
    def write(self, rows, _orig=cls.write):
        rows = list(rows)
        if count["n"] == kill_at and where == "before":
            die()
        if count["n"] == kill_at and where == "during":  # the block is half written when the process dies
            if isinstance(self, store.SQLiteStore):
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany("INSERT INTO results (path, seq, record) VALUES (?, ?, '{}')",
                                    [(r["path"], s) for s, r in rows[: len(rows) // 2]])
            else:
                (self.shards / ".tmp-part-half.parquet").write_bytes(b"PAR1 half a shard")
            die()
        out = _orig(self, rows)
        count["n"] += 1
        return out
    cls.write = write

from aligngemini.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _kill_and_resume(engine: str, folder: Path, bundle: Path, tmp_path: Path) -> list[dict]:
    launcher = tmp_path / "launch.py"
    launcher.write_text(KILLING_LAUNCHER)
    results = tmp_path / f"r-{engine}"
    args = ["scan", str(folder), "--out", str(results), "--bundle", str(bundle), "--device", "cpu",
            "--batch-size", "2", "-q", "--engine", engine]  # fmt: skip
    for kill_at, where in ((1, "during"), (0, "before"), (1, "before")):
        env = {**os.environ, "KILL_AT": str(kill_at), "KILL_WHERE": where}
        code, err = _run_in_group([sys.executable, str(launcher), *args], env)
        assert code == -signal.SIGKILL, err
    code, err = _run_in_group(
        [sys.executable, str(launcher), *args], {**os.environ, "KILL_AT": "-1", "KILL_WHERE": "-"}
    )
    assert code == 0, err
    return _export(results, tmp_path / f"{engine}.jsonl")


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_kill_9_then_resume_gives_every_input_exactly_once(engine: str, folder: Path, tiny_bundle_dir: Path,
                                                           tmp_path: Path) -> None:  # fmt: skip
    recs = _kill_and_resume(engine, folder, tiny_bundle_dir, tmp_path)
    paths = [r["path"] for r in recs]
    assert sorted(paths) == sorted(_image_paths(folder)) and len(paths) == len(set(paths))
    assert all(r["verdict"] is not None or r["error"] for r in recs)
    assert sum(bool(r["duplicate_of"]) for r in recs) == 2


def test_ray_engine_gives_the_local_engine_records(
    folder: Path, tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    common = [str(folder), "--bundle", str(tiny_bundle_dir), "--device", "cpu", "--batch-size", "4", "-q"]
    assert main(["scan", *common, "--out", str(tmp_path / "local")]) == 0
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray with this box's 2 CPUs
    code, err = _run_in_group(
        [*SCAN, *common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--actors", "2"], env
    )
    assert code == 0, err
    assert (tmp_path / "ray" / "shards").is_dir() and not (tmp_path / "ray" / "scan.sqlite").exists()
    local = _export(tmp_path / "local", tmp_path / "local.jsonl")
    ray = _export(tmp_path / "ray", tmp_path / "ray.jsonl")
    assert [r["path"] for r in ray] == [r["path"] for r in local]
    for a, b in zip(local, ray, strict=True):
        assert _without_scores(a) == _without_scores(b)
        for key in ("p_fake",):
            assert (a[key] is None and b[key] is None) or a[key] == pytest.approx(b[key], abs=1e-6)
        for role in ("pixel", "semantic"):
            pa_, pb = a["branches"][role]["p_fake"], b["branches"][role]["p_fake"]
            assert (pa_ is None and pb is None) or pa_ == pytest.approx(pb, abs=1e-6)


def test_the_ray_driver_makes_the_first_copy_in_input_order_the_original() -> None:
    """An actor that scored a later block first took the earlier copy for the duplicate; the driver, which gets
    records in input order, writes what the local engine writes."""
    from aligngemini.scan.ray_engine import in_input_order
    from aligngemini.scan.scorer import as_duplicate

    scored = {
        "path": "/d/zz-copy.png",
        "sha256": "aa",
        "p_fake": 0.7,
        "verdict": "fake",
        "duplicate_of": None,
    }
    known = {"path": "/old/k.png", "sha256": "kk", "p_fake": 0.2, "verdict": "real", "duplicate_of": None}
    unreadable = {"path": "/d/gone.png", "sha256": None, "error": "no such file", "duplicate_of": None}
    firsts = {"kk": known}  # from the store's earlier shards
    given = [as_duplicate(scored, "/d/a.png"), unreadable, {**known, "path": "/d/k2.png"}, scored]
    out = [in_input_order(r, firsts) for r in given]
    assert out[0] == {**scored, "path": "/d/a.png", "duplicate_of": None}
    assert out[1] == unreadable
    assert out[2] == {**known, "path": "/d/k2.png", "duplicate_of": "/old/k.png"}
    assert out[3] == {**scored, "duplicate_of": "/d/a.png"}
    assert firsts == {"kk": known, "aa": out[0]}


def _without_scores(rec: dict) -> dict:
    """A record less its floating-point scores (summed in another order on another thread count)."""
    out = {k: v for k, v in rec.items() if k != "p_fake"}
    out["branches"] = {role: {"fake": b["fake"]} for role, b in rec["branches"].items()}
    return out


def test_a_log_gets_periodic_progress_lines_and_a_final_tally(folder: Path, tiny_bundle_dir: Path, tmp_path: Path,
                                                               capsys) -> None:  # fmt: skip
    args = ["scan", str(folder), "--out", str(tmp_path / "r"), "--bundle", str(tiny_bundle_dir), "--device", "cpu",
            "--batch-size", "4", "--log-every", "0"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    lines = re.findall(r"^scan: (\d+)/31 \([\d.]+ img/s, ETA (?:[\d:]+|unknown)\)$", err, flags=re.M)
    assert len(lines) >= 2 and lines[-1] == "31", err  # one line per block on stderr that is not a terminal
    assert re.search(
        r"31 inputs in [\d.]+ s \([\d.]+/s\): 28 scored, 2 duplicates, 1 errors \(.+: 1\), \d+ fake", err
    )
