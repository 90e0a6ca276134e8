"""The pure-semantic builder and content balance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from build_fixtures import PatternGenerator, Source, mean_colour_embedder, write_sources
from PIL import Image
from scipy import stats

from aligngemini.data.build.balance import EmbeddingCache, balance_rows, embed_rows, knn_match
from aligngemini.data.build.common import BuildError
from aligngemini.data.build.semantic import SemanticBuildConfig, build_semantic_set
from aligngemini.data.manifest import ManifestRow, read_manifest
from aligngemini.decode import estimate_jpeg_quality


def _mixed_sources(n: int) -> list[Source]:
    """Reals: large PNG/JPEG photos of varied aspect; fakes: small square WebP. The classic shortcut."""
    out = []
    for i in range(n):
        out.append(
            Source("real", "cam", "train" if i % 4 else "val", "JPEG" if i % 2 else "PNG", 92, (240, 168))
        )
        out.append(
            Source("fake", "gen", "train" if i % 4 else "val", "WEBP", None, (176, 176), generator="sdx")
        )
    return out


def test_chain_gives_both_classes_one_format_and_size_distribution(tmp_path: Path) -> None:
    manifest = write_sources(tmp_path / "src", _mixed_sources(40))
    rows = read_manifest(manifest)
    cfg = SemanticBuildConfig(size_range=(96, 160), jpeg_range=(70, 90), blur_prob=0.5, noise_prob=0.5)
    res = build_semantic_set(rows, tmp_path / "out", cfg, source_base=manifest.parent, progress=False)
    assert res.stats.written == 80
    by_label: dict[str, dict[str, list]] = {
        "real": {"short": [], "q": [], "fmt": [], "aspect": []},
        "fake": {"short": [], "q": [], "fmt": [], "aspect": []},
    }
    for row in res.rows:
        with Image.open(tmp_path / "out" / row.path) as img:
            d = by_label[row.label]
            d["fmt"].append(img.format)
            d["short"].append(min(img.size))
            d["aspect"].append(img.width / img.height)
            d["q"].append(estimate_jpeg_quality(img))
        assert row.split in ("train", "val") and row.source in ("cam", "gen")
    for label, d in by_label.items():
        assert set(d["fmt"]) == {"JPEG"}, label
        assert set(d["aspect"]) == {1.0}, label
        assert all(88 <= s <= 160 for s in d["short"])  # target in range, then down to a multiple of 8
        assert all(70 <= q <= 90 for q in d["q"])
    # Same distributions: a two-sample test cannot tell the classes apart by size or quality.
    assert stats.ks_2samp(by_label["real"]["short"], by_label["fake"]["short"]).pvalue > 0.01
    assert stats.ks_2samp(by_label["real"]["q"], by_label["fake"]["q"]).pvalue > 0.01
    # Splits and generators are inherited from the source rows.
    assert {(r.label, r.split) for r in res.rows} == {
        (lb, s) for lb in ("real", "fake") for s in ("train", "val")
    }
    assert {r.generator for r in res.rows if r.label == "fake"} == {"sdx"}


def test_small_images_are_skipped_or_capped(tmp_path: Path) -> None:
    manifest = write_sources(
        tmp_path / "src",
        [Source("real", "cam", "train", size=(200, 200)), Source("fake", "gen", "train", size=(120, 120))],
    )
    rows = read_manifest(manifest)
    cfg = SemanticBuildConfig(size_range=(100, 150), blur_prob=0, noise_prob=0)
    res = build_semantic_set(rows, tmp_path / "skip", cfg, source_base=manifest.parent, progress=False)
    assert [r.label for r in res.rows] == ["real"] and sum(res.stats.skipped.values()) == 1
    cfg = SemanticBuildConfig(size_range=(100, 150), small="cap", blur_prob=0, noise_prob=0)
    res = build_semantic_set(rows, tmp_path / "cap", cfg, source_base=manifest.parent, progress=False)
    fake = next(r for r in res.rows if r.label == "fake")
    assert fake.extra["ops"]["short_side"] <= 120
    # At least 2x down-scaling: the 120 px fake reaches targets up to 60 px only.
    cfg = SemanticBuildConfig(size_range=(50, 60), min_downscale=2.0, blur_prob=0, noise_prob=0)
    res = build_semantic_set(rows, tmp_path / "down2", cfg, source_base=manifest.parent, progress=False)
    assert sorted(r.label for r in res.rows) == ["fake", "real"]
    assert all(r.extra["source_size"][0] / r.extra["ops"]["short_side"] >= 2.0 for r in res.rows)
    cfg = SemanticBuildConfig(size_range=(50, 70), min_downscale=2.0, blur_prob=0, noise_prob=0)
    res = build_semantic_set(rows, tmp_path / "down2b", cfg, source_base=manifest.parent, progress=False)
    assert [r.label for r in res.rows] == ["real"] and res.stats.skipped == {"short side below 140": 1}


def test_vae_round_trip_applies_to_both_classes_and_resume_skips(tmp_path: Path) -> None:
    manifest = write_sources(tmp_path / "src", _mixed_sources(6))
    rows = read_manifest(manifest)
    cfg = SemanticBuildConfig(size_range=(96, 128), batch_size=4)
    vae = PatternGenerator("vae:test")
    res = build_semantic_set(
        rows, tmp_path / "out", cfg, vae=vae, source_base=manifest.parent, progress=False
    )
    assert vae.images == 12
    assert all(r.extra["ops"].get("vae") for r in res.rows)
    vae2 = PatternGenerator("vae:test")
    res2 = build_semantic_set(
        rows, tmp_path / "out", cfg, vae=vae2, source_base=manifest.parent, progress=False
    )
    assert vae2.calls == 0 and res2.stats.done_before == 12 and len(res2.rows) == 12
    with pytest.raises(BuildError, match="different semantic config"):
        build_semantic_set(rows, tmp_path / "out", cfg, vae=None, source_base=manifest.parent, progress=False)


def test_semantic_builder_needs_both_classes(tmp_path: Path) -> None:
    manifest = write_sources(tmp_path / "src", [Source("real", "cam", "train", size=(300, 300))])
    with pytest.raises(BuildError, match="both classes"):
        build_semantic_set(
            read_manifest(manifest), tmp_path / "out", source_base=manifest.parent, progress=False
        )


def _row(label: str, split: str, i: int, topic: str | None = None) -> ManifestRow:
    return ManifestRow(
        path=f"{label}/{i}.png",
        label=label,
        generator=None,
        source=label,
        license=None,
        sha256=f"{label}{i}",
        width=8,
        height=8,
        format="PNG",
        split=split,
        group=None,
        extra={"topic": topic} if topic else {},
    )


def test_knn_match_is_one_to_one_and_maximises_similarity() -> None:
    real = np.array([[1, 0], [0, 1], [0.7, 0.7]], np.float32)
    fake = np.array([[0.1, 1], [1, 0.05]], np.float32)
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    fake /= np.linalg.norm(fake, axis=1, keepdims=True)
    pairs = knn_match(real, fake)
    assert [(r, f) for r, f, _ in pairs] == [(0, 1), (1, 0)]
    assert len(knn_match(real, fake, min_similarity=0.999)) == 0


def test_knn_balance_matches_within_each_split() -> None:
    rows = [_row("real", "train", i) for i in range(4)] + [_row("fake", "train", i) for i in range(3)]
    rows += [_row("real", "val", 9), _row("fake", "val", 9), _row("fake", "val", 10)]
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(rows), 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    kept, report = balance_rows(rows, "knn", embeddings=emb)
    assert report["after"] == {"train": {"fake": 3, "real": 3}, "val": {"fake": 1, "real": 1}}
    for row in kept:
        partner = row.extra["content_partner"]
        partner_row = next(r for r in rows if r.sha256 == partner)
        assert partner_row.split == row.split and partner_row.label != row.label


def test_group_balance_keeps_shared_topics_at_equal_counts() -> None:
    rows = [_row("real", "train", i, "dogs") for i in range(5)] + [
        _row("fake", "train", i, "dogs") for i in range(2)
    ]
    rows += [_row("real", "train", 10 + i, "mountains") for i in range(3)]
    rows += [_row("fake", "train", 10 + i, "portraits") for i in range(3)]
    kept, report = balance_rows(rows, "groups", group_key="extra.topic")
    assert report["groups_kept"] == ["train:dogs"]
    assert sorted(r.label for r in kept) == ["fake", "fake", "real", "real"]
    with pytest.raises(ValueError, match="unknown balance method"):
        balance_rows(rows, "magic")


def test_embed_rows_uses_the_cache(tmp_path: Path) -> None:
    manifest = write_sources(tmp_path / "src", [Source("real", "a", "train"), Source("fake", "b", "train")])
    rows = read_manifest(manifest)
    calls = []

    def embedder(images: list[Image.Image]) -> np.ndarray:
        calls.append(len(images))
        return mean_colour_embedder(images)

    cache_path = tmp_path / "cache.npz"
    emb, kept = embed_rows(rows, manifest.parent, embedder, cache=EmbeddingCache(cache_path), progress=False)
    assert kept == [0, 1] and emb.shape == (2, 15) and calls == [2]
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    emb2, _ = embed_rows(rows, manifest.parent, embedder, cache=EmbeddingCache(cache_path), progress=False)
    assert calls == [2] and np.allclose(emb, emb2)


def test_content_view_keeps_scene_and_drops_texture() -> None:
    from aligngemini.data import transforms as T
    from aligngemini.data.build.balance import content_view, embedder_id

    rng = np.random.default_rng(0)
    base = Image.new("RGB", (256, 192), (120, 90, 60))
    noisy = T.add_noise(base, 20.0, rng)
    small_a, small_b = content_view(base, 48), content_view(noisy, 48)
    assert small_a.size == (64, 48)
    # 16 pixels averaged per output pixel: the noise shrinks 4x, the colour stays.
    diff = np.asarray(small_b, np.float64) - np.asarray(small_a, np.float64)
    assert abs(diff.mean()) < 1.0 and diff.std() < 6.0
    assert content_view(base, 512) is base
    ids = {embedder_id(mean_colour_embedder, "colour", 64, m) for m in ("aa", "lanczos", "box")}
    assert len(ids) == 3 and embedder_id(mean_colour_embedder, "colour", 0) not in ids
    with pytest.raises(ValueError, match="view method"):
        content_view(base, 48, "bilinear")


def test_content_view_does_not_alias_fine_texture() -> None:
    """Stripes finer than the view can hold must fade, not fold into coarse stripes (a box filter lets
    them through, and CLIP reads them)."""
    from aligngemini.data.build.balance import content_view

    x = np.arange(256, dtype=np.float64)
    # period 3.2 px: above the 64-px view's Nyquist (period 8 px of the 256-px image)
    stripes = 128 + 100 * np.sin(2 * np.pi * x / 3.2)
    img = Image.fromarray(np.repeat(np.tile(stripes, (256, 1))[:, :, None], 3, axis=2).astype(np.uint8))
    leak = {m: np.asarray(content_view(img, 64, m), np.float64).std() for m in ("aa", "box")}
    assert leak["box"] > 10.0  # the box view shows stripes that are not in the scene at that scale
    assert leak["aa"] < 2.0
