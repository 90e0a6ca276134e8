"""The purity audit: probes on sets where the answer is known, the report, the commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from build_fixtures import PatternGenerator, Source, checker, mean_colour_embedder, photo, write_sources
from PIL import Image

from aligngemini.cli import build_parser
from aligngemini.data.build.audit import AuditConfig, run_audit, split_rows
from aligngemini.data.build.balance import EmbeddingCache
from aligngemini.data.build.pixel import PixelBuildConfig, build_pixel_set
from aligngemini.data.build.probes import (
    PixelProbeConfig,
    balanced_accuracy,
    cross_validated_auc,
    out_of_group_scores,
    run_embedding_probe,
    run_pixel_probe,
)
from aligngemini.data.build.semantic import SemanticBuildConfig, build_semantic_set
from aligngemini.data.manifest import read_manifest

TINY_PROBE = PixelProbeConfig(steps=40, width=8, batch_size=16, crops_per_image=4, crop_min=24, crop_max=32)


def _with_pattern(img: Image.Image, amplitude: float) -> Image.Image:
    arr = np.asarray(img, np.float32) + checker(img.size, amplitude)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def test_pixel_probe_finds_a_high_frequency_trace() -> None:
    reals = [photo(i, 64, 64) for i in range(60)]
    fakes = [_with_pattern(photo(100 + i, 64, 64), 3.0) for i in range(60)]
    train = reals[:40] + fakes[:40]
    val = reals[40:] + fakes[40:]
    y_tr, y_ev = np.repeat([0, 1], 40), np.repeat([0, 1], 20)
    result = run_pixel_probe(train, y_tr, val, y_ev, TINY_PROBE, measured_on="test", progress=False)
    assert result.balanced_accuracy >= 0.9 and result.auc >= 0.95
    assert result.n_eval == {"real": 20, "fake": 20}


def test_pixel_probe_sits_near_chance_without_pixel_differences() -> None:
    images = [photo(i, 64, 64) for i in range(100)]
    y_tr, y_ev = np.tile([0, 1], 30), np.tile([0, 1], 20)
    result = run_pixel_probe(
        images[:60], y_tr, images[60:], y_ev, TINY_PROBE, measured_on="test", progress=False
    )
    assert abs(result.balanced_accuracy - 0.5) <= 0.2
    assert result.ci95[0] <= 0.5 <= result.ci95[1]


def test_pixel_probe_skips_images_smaller_than_its_crop() -> None:
    images = [photo(i, 64, 64) for i in range(8)] + [photo(9, 16, 16)]
    labels = np.array([0, 1] * 4 + [0])
    result = run_pixel_probe(images, labels, images, labels, TINY_PROBE, measured_on="test", progress=False)
    assert result.notes["too_small"] == {"train": 1, "eval": 1}


def test_embedding_probe_and_out_of_group_scores() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    separable = rng.normal(size=(120, 6)) + y[:, None] * 2.0
    same = rng.normal(size=(120, 6))
    good = run_embedding_probe(separable[::2], y[::2], separable[1::2], y[1::2], measured_on="odd rows")
    null = run_embedding_probe(same[::2], y[::2], same[1::2], y[1::2], measured_on="odd rows")
    assert good.balanced_accuracy > 0.9 and abs(null.balanced_accuracy - 0.5) < 0.2
    groups = np.where(y == 0, np.where(np.arange(120) % 2, "real:a", "real:b"), "fake:only")
    loo = out_of_group_scores(separable, y, groups)
    # Holding out the only fake source leaves training with one class: it cannot be scored.
    assert loo["per_group"]["fake:only"]["held_out"] is False
    assert loo["per_group"]["real:a"]["held_out"] and loo["n_scored"] == 60
    assert loo["auc"] is None  # only reals were scored
    assert cross_validated_auc(separable, y) > 0.95
    assert balanced_accuracy(np.array([0, 0, 1, 1]), np.array([0.1, 0.9, 0.9, 0.9])) == 0.75


def test_split_rows_prefers_manifest_splits_and_falls_back_by_group(tmp_path: Path) -> None:
    manifest = write_sources(
        tmp_path, [Source(lb, "s", sp, size=(8, 8)) for lb in ("real", "fake") for sp in ("train", "val")]
    )
    rows = read_manifest(manifest)
    train, ev, how = split_rows(rows, AuditConfig())
    assert (
        {r.split for r in train} == {"train"}
        and {r.split for r in ev} == {"val"}
        and "sources shared: s" in how
    )
    unsplit = [r for r in rows]
    for r in unsplit:
        r.split = None
        r.group = r.path
    train, ev, how = split_rows(unsplit, AuditConfig(fallback_eval_fraction=0.5))
    assert len(train) + len(ev) == 4 and "optimistic" in how


@pytest.fixture
def tiny_sets(tmp_path: Path) -> tuple[Path, Path]:
    """A pixel set whose fakes carry a checkerboard trace, and a semantic set whose classes differ only in
    content (mean colour) after the shared chain."""
    pixel_sources = [
        Source("real", "cam-a" if i < 14 else "cam-b", "train" if i < 14 else "val", "JPEG", 90, (80, 80))
        for i in range(24)
    ]
    manifest = write_sources(tmp_path / "psrc", pixel_sources)
    cfg = PixelBuildConfig(jpeg_align_prob=0.5, pixel_blend_prob=0, freq_blend_prob=0, resize_prob=0)
    build_pixel_set(
        read_manifest(manifest),
        [PatternGenerator(amplitude=4.0)],
        tmp_path / "pixel",
        cfg,
        source_base=manifest.parent,
        progress=False,
    )
    sem_sources = []
    for i in range(56):
        split = "train" if i % 7 < 5 else "val"
        sem_sources.append(Source("real", f"photos-{split}", split, "PNG", None, (96, 96), tint=(40, 0, -40)))
        sem_sources.append(
            Source(
                "fake",
                f"ai-{split}",
                split,
                "WEBP",
                None,
                (96, 96),
                tint=(-40, 0, 40),
                generator=f"gen-{split}",
            )
        )
    manifest = write_sources(tmp_path / "ssrc", sem_sources, seed0=1000)
    scfg = SemanticBuildConfig(size_range=(64, 80), jpeg_range=(80, 95), blur_prob=0.3, noise_prob=0.3)
    build_semantic_set(
        read_manifest(manifest), tmp_path / "semantic", scfg, source_base=manifest.parent, progress=False
    )
    return tmp_path / "pixel", tmp_path / "semantic"


@pytest.mark.slow  # ~10-20 s on a shared 2-core box: two probe trainings plus two set builds
def test_audit_end_to_end_on_tiny_sets(tiny_sets: tuple[Path, Path], tmp_path: Path) -> None:
    pixel_dir, semantic_dir = tiny_sets
    cfg = AuditConfig(pixel_probe=TINY_PROBE, content_view=32)
    cache = EmbeddingCache(tmp_path / "emb.npz")
    report = run_audit(
        pixel_dir,
        semantic_dir,
        tmp_path / "report",
        config=cfg,
        embedder=mean_colour_embedder,
        embedder_name="colour",
        embedding_cache=cache,
        content_manifest=tmp_path / "ssrc" / "manifest.jsonl",
        progress=False,
    )
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["pixel probe on the pixel set"]["balanced_accuracy"] >= 0.8
    assert checks["colour probe (32 px view) on the semantic set"]["balanced_accuracy"] >= 0.9
    assert abs(checks["colour probe (32 px view) on the pixel set"]["balanced_accuracy"] - 0.5) <= 0.1
    assert abs(checks["pixel probe on the semantic set"]["balanced_accuracy"] - 0.5) <= 0.25
    assert checks["metadata probe on the pixel set"]["verdict"] == "pass"  # pairs share size and format
    # The checkerboard (amplitude 4, i.e. ~36 dB) averages out at the 32 px view.
    fidelity = report["sets"]["pixel"]["pair_fidelity"]
    assert fidelity["pairs"] == 24 and 30 < fidelity["psnr_db"]["median"] < 45
    assert fidelity["psnr_db_at_view"]["median"] > fidelity["psnr_db"]["median"] + 5
    assert "pair_fidelity" not in report["sets"]["semantic"]
    per_source = checks["pixel probe on the pixel set"]["notes"]["by_source"]
    assert set(per_source) == {"fake:cam-b", "real:cam-b"} and per_source["fake:cam-b"]["n"] == 10
    assert "Probe accuracy by eval source" in (tmp_path / "report" / "report.md").read_text()
    for c in report["checks"]:
        assert "split" in c["measured_on"] and c["n_eval"]["real"] > 0 and c["n_eval"]["fake"] > 0
        assert "sources disjoint" in c["measured_on"]
    sem = report["sets"]["semantic"]["per_class"]
    assert sem["real"]["format"] == sem["fake"]["format"] == {"JPEG": sem["real"]["n"]}
    assert report["sets"]["pixel"]["counts_by_split"]["val"] == {"fake:cam-b": 10, "real:cam-b": 10}
    cs = report["content_separability"]["semantic set"]
    assert cs["split"]["auc"] > 0.9 and cs["cross_validated_auc_optimistic"] > 0.9
    assert cs["leave_one_source_out"]["n_total"] == report["sets"]["semantic"]["per_class"]["real"]["n"] * 2
    # Input manifest: the 112 sources, all scored when holding out each of their 4 sources in turn.
    src = report["content_separability"][f"input manifest {tmp_path / 'ssrc'}"]
    assert src["leave_one_source_out"]["n_total"] == 112 and src["leave_one_source_out"]["n_scored"] == 112
    assert src["leave_one_source_out"]["auc"] > 0.9
    n_set_images = sum(s["per_class"][c]["n"] for s in report["sets"].values() for c in ("real", "fake"))
    assert (tmp_path / "emb.npz").is_file() and len(cache.data) == n_set_images + 112
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["checks"] == report["checks"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| pixel probe on the pixel set |" in md and "Content separability" in md


def test_data_commands_are_registered(tmp_path: Path) -> None:
    parser = build_parser()
    args = parser.parse_args(
        [
            "data",
            "build-pixel",
            "--manifest",
            "m.jsonl",
            "--generator",
            "vae:x",
            "--generator",
            "esrgan:medium:x2",
            "--out",
            "o",
            "--workers",
            "3",
            "--limit",
            "5",
            "--crop-size",
            "256",
        ]
    )
    assert args.generator == ["vae:x", "esrgan:medium:x2"] and args.crop_size == 256 and callable(args.func)
    args = parser.parse_args(
        [
            "data",
            "build-semantic",
            "--manifest",
            "m",
            "--out",
            "o",
            "--size-range",
            "256",
            "512",
            "--jpeg-range",
            "70",
            "95",
            "--balance",
            "none",
            "--vae",
            "vae:x",
        ]
    )
    assert args.size_range == [256, 512] and args.balance == "none" and callable(args.func)
    args = parser.parse_args(["data", "audit", "--pixel-set", "p", "--semantic-set", "s", "--report", "r"])
    assert callable(args.func)


def test_cli_build_and_audit_report_errors_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aligngemini.cli import main

    manifest = write_sources(tmp_path / "src", [Source("real", "a", "train", size=(64, 64))])
    rc = main(
        [
            "data",
            "build-pixel",
            "--manifest",
            str(manifest),
            "--generator",
            "bogus",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "'bogus'" in capsys.readouterr().err
    rc = main(
        [
            "data",
            "build-semantic",
            "--manifest",
            str(tmp_path / "missing.jsonl"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "no such manifest" in capsys.readouterr().err
    rc = main(["data", "audit", "--pixel-set", str(tmp_path / "nothing"), "--report", str(tmp_path / "r")])
    assert rc == 2 and "build-pixel" in capsys.readouterr().err
