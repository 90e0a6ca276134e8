"""The data commands end to end through the CLI, with a real (tiny, random) diffusers VAE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from build_fixtures import Source, write_sources
from PIL import Image

from aligngemini.cli import main
from aligngemini.data.manifest import read_manifest


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    out = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(out)
    return out


def test_build_pixel_and_semantic_commands_with_a_vae(
    tmp_path: Path, tiny_vae: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = [Source("real", "cam", "train" if i < 3 else "val", "JPEG", 88, (80, 72)) for i in range(4)]
    sources += [Source("fake", "gen", "train" if i < 3 else "val", "WEBP", None, (72, 72)) for i in range(4)]
    manifest = write_sources(tmp_path / "src", sources)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("pixel:\n  jpeg_align_prob: 1.0\n  resize_prob: 0.0\n", encoding="utf-8")
    args = ["data", "build-pixel", "--manifest", str(manifest), "--generator", f"vae:{tiny_vae}", "--out",
            str(tmp_path / "pixel"), "--config", str(recipe), "--set", "pixel_blend_prob=0", "--crop-size", "64",
            "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert "4 new pairs" in capsys.readouterr().out
    rows = read_manifest(tmp_path / "pixel" / "manifest.jsonl")
    assert len(rows) == 8 and {r.format for r in rows} == {"JPEG"}
    assert {r.generator for r in rows if r.label == "fake"} == {f"vae:{tiny_vae.name}"}
    for r in rows:
        with Image.open(tmp_path / "pixel" / r.path) as img:
            assert img.size == (64, 64)
    assert main(args) == 0  # resumed: nothing to do
    assert "0 new pairs, 4 already done" in capsys.readouterr().out

    args = ["data", "build-semantic", "--manifest", str(manifest), "--out", str(tmp_path / "semantic"),
            "--size-range", "48", "64", "--jpeg-range", "80", "90", "--balance", "none", "--vae", f"vae:{tiny_vae}",
            "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(args) == 0
    rows = read_manifest(tmp_path / "semantic" / "manifest.jsonl")
    assert sorted(r.label for r in rows) == ["fake"] * 4 + ["real"] * 4
    assert all(r.extra["ops"]["vae"] for r in rows)
    report = json.loads((tmp_path / "semantic" / "build_report.json").read_text())
    assert report["balance"]["method"] == "none" and report["vae_calls"] >= 1


def test_builders_take_only_the_sources_asked_for(
    tmp_path: Path, tiny_vae: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = [
        Source("real", name, "train", "PNG", None, (72, 72))
        for name in ("cam:a", "cam:b", "wall")
        for _ in range(2)
    ]
    manifest = write_sources(tmp_path / "src", sources)
    base = ["data", "build-pixel", "--manifest", str(manifest), "--generator", f"vae:{tiny_vae}", "--crop-size", "64",
            "--device", "cpu", "--quiet"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "p1"), "--source", "cam:*", "--exclude-source", "cam:b"]) == 0
    rows = read_manifest(tmp_path / "p1" / "manifest.jsonl")
    assert len(rows) == 4 and {r.source for r in rows if r.label == "real"} == {"cam:a"}
    assert main([*base, "--out", str(tmp_path / "p2"), "--source", "nothing*"]) == 2
    err = capsys.readouterr().err
    assert "no row's source matches" in err and "cam:a" in err


def test_build_pixel_dtype_sets_the_generators_arithmetic(
    tmp_path: Path, tiny_vae: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    manifest = write_sources(tmp_path / "src", [Source("real", "cam", "train", "PNG", None, (64, 64))])
    base = ["data", "build-pixel", "--manifest", str(manifest), "--generator", f"vae:{tiny_vae}", "--crop-size", "64",
            "--set", "pixel_blend_prob=0", "--set", "jpeg_align_prob=0", "--device", "cpu", "--quiet"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "fp32")]) == 0
    assert main([*base, "--out", str(tmp_path / "bf16"), "--dtype", "bf16"]) == 0
    fakes = []
    for name in ("fp32", "bf16"):
        (row,) = [r for r in read_manifest(tmp_path / name / "manifest.jsonl") if r.label == "fake"]
        with Image.open(tmp_path / name / row.path) as img:
            fakes.append(np.asarray(img.convert("RGB"), dtype=float))
    assert 0 < np.abs(fakes[0] - fakes[1]).mean() < 4  # the same decoder in another arithmetic
    with pytest.raises(SystemExit) as exc:
        main([*base, "--out", str(tmp_path / "x"), "--dtype", "int8"])
    assert exc.value.code == 2 and "invalid choice: 'int8'" in capsys.readouterr().err
