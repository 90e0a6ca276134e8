"""The pure-semantic set: real and AI images through one pixel-cue-removing chain.

Format, size, compression and decoder traces must carry no label, so both classes get the *same*
random distribution of operations, drawn per image from its own seed:

1. optional centre crop to a square (``aspect: square``), so aspect ratio says nothing either;
2. down-scale so the short side is a target drawn uniformly from ``size_range`` with a random filter,
   by at least ``min_downscale`` (``small: skip`` drops images that cannot reach every target that
   way, which keeps the target distribution identical across classes; ``small: cap`` lowers the
   target instead);
3. crop to a multiple of 8 (the VAE's need, applied to every image);
4. optional Gaussian blur, optional VAE round trip (both classes), optional Gaussian noise;
5. JPEG at a quality drawn from ``jpeg_range``: every output file is a JPEG.

Which images enter is decided first by content balance (``balance.py``): the chain removes pixel cues,
balance removes subject-matter cues.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from aligngemini.data import transforms as T
from aligngemini.data.build.common import (
    BuildError,
    BuildResult,
    BuildStats,
    OutputDir,
    SetBuilder,
    pending,
    report_build,
    row_key,
    run_batched,
    seed_for,
    stable_id,
    subsample,
)
from aligngemini.data.manifest import ManifestRow
from aligngemini.generators.base import Generator

LABELS = ("real", "fake")


@dataclass
class SemanticBuildConfig:
    size_range: tuple[int, int] = (256, 512)  # target short side, pixels
    aspect: str = "square"  # square | keep
    small: str = "skip"  # skip | cap (see module docstring)
    min_downscale: float = (
        1.0  # every image shrinks by at least this factor (2.0 wipes most fine-scale traces)
    )
    resize_methods: tuple[str, ...] = ("box", "bilinear", "bicubic", "lanczos")
    jpeg_range: tuple[int, int] = (70, 95)
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    noise_prob: float = 0.2
    noise_sigma: tuple[float, float] = (1.0, 3.0)
    vae_prob: float = 1.0  # used only when a VAE is given
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        lo, hi = (int(v) for v in self.size_range)
        if not 8 <= lo <= hi:
            raise ValueError(
                f"semantic config: size_range must satisfy 8 <= low <= high, got {self.size_range}"
            )
        self.size_range = (lo, hi)
        qlo, qhi = (int(v) for v in self.jpeg_range)
        if not 1 <= qlo <= qhi <= 100:
            raise ValueError(f"semantic config: jpeg_range must be within 1..100, got {self.jpeg_range}")
        self.jpeg_range = (qlo, qhi)
        self.blur_sigma = tuple(float(v) for v in self.blur_sigma)  # type: ignore[assignment]
        self.noise_sigma = tuple(float(v) for v in self.noise_sigma)  # type: ignore[assignment]
        for name in ("blur_sigma", "noise_sigma"):
            a, b = getattr(self, name)
            if not 0 <= a <= b:
                raise ValueError(f"semantic config: {name} must satisfy 0 <= low <= high")
        self.resize_methods = tuple(self.resize_methods)
        if not self.resize_methods or any(m not in T.RESAMPLE for m in self.resize_methods):
            raise ValueError(f"semantic config: resize_methods must be among {sorted(T.RESAMPLE)}")
        if self.aspect not in ("square", "keep"):
            raise ValueError(f"semantic config: aspect must be 'square' or 'keep', got {self.aspect!r}")
        if self.min_downscale < 1.0:
            raise ValueError(
                f"semantic config: min_downscale must be >= 1 (never up-scale), got {self.min_downscale}"
            )
        if self.small not in ("skip", "cap"):
            raise ValueError(f"semantic config: small must be 'skip' or 'cap', got {self.small!r}")
        for name in ("blur_prob", "noise_prob", "vae_prob"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"semantic config: {name} must be a probability in [0, 1]")


@dataclass
class _Job:
    row: ManifestRow
    item_id: str


@dataclass
class _Prepared:
    job: _Job
    image: Image.Image
    ops: dict[str, Any]
    use_vae: bool
    source_format: str | None
    source_size: tuple[int, int]


def draw_target(short: int, cfg: SemanticBuildConfig, rng: np.random.Generator) -> int | None:
    """The short side this image will be down-scaled to, or None when policy says skip it."""
    lo, hi = cfg.size_range
    target = int(rng.integers(lo, hi + 1))
    reach = short / cfg.min_downscale  # the largest target this image reaches by shrinking enough
    if cfg.small == "skip":
        return target if reach >= hi else None
    target = min(target, int(reach))
    return target if target >= lo else None


class _SemanticBuilder(SetBuilder):
    cfg: SemanticBuildConfig

    def __init__(
        self, cfg: SemanticBuildConfig, out: OutputDir, source_base: Path, stats: BuildStats, vae: bool
    ):
        super().__init__(cfg, out, source_base, stats)
        self.vae = vae

    def prepare(self, job: _Job) -> _Prepared | None:
        cfg = self.cfg
        found = self.load(job.row)
        if found is None:
            return None
        path, loaded = found
        img = loaded.image
        rng = np.random.default_rng([*seed_for(cfg.seed, job.item_id), 0])
        ops: dict[str, Any] = {}
        if cfg.aspect == "square" and img.width != img.height:
            side = min(img.size)
            img = img.crop(T.center_box(img.width, img.height, side, side))
        target = draw_target(min(img.size), cfg, rng)
        if target is None:
            need = (cfg.size_range[1] if cfg.small == "skip" else cfg.size_range[0]) * cfg.min_downscale
            self.stats.skip(f"short side below {need:g}", f"{path}: {min(img.size)}")
            return None
        method = str(cfg.resize_methods[int(rng.integers(len(cfg.resize_methods)))])
        if target != min(img.size):
            img = T.resize_short_side(img, target, method)
        ops["short_side"] = target
        ops["resize_method"] = method
        w8, h8 = img.width - img.width % 8, img.height - img.height % 8
        if (w8, h8) != img.size:
            img = img.crop(T.center_box(img.width, img.height, w8, h8))
        if rng.random() < cfg.blur_prob:
            sigma = float(rng.uniform(*cfg.blur_sigma))
            img = T.gaussian_blur(img, sigma)
            ops["blur_sigma"] = round(sigma, 4)
        use_vae = self.vae and rng.random() < cfg.vae_prob
        return _Prepared(job, img, ops, use_vae, loaded.facts.format, loaded.image.size)

    def finish(self, prep: _Prepared, processed: Image.Image) -> None:
        cfg = self.cfg
        job = prep.job
        img = processed
        if img.size != prep.image.size:
            raise BuildError(f"the VAE returned {img.size} for a {prep.image.size} input")
        rng = np.random.default_rng([*seed_for(cfg.seed, job.item_id), 1])
        ops = dict(prep.ops)
        if prep.use_vae:
            ops["vae"] = True
        if rng.random() < cfg.noise_prob:
            sigma = float(rng.uniform(*cfg.noise_sigma))
            img = T.add_noise(img, sigma, rng)
            ops["noise_sigma"] = round(sigma, 4)
        quality = int(rng.integers(cfg.jpeg_range[0], cfg.jpeg_range[1] + 1))
        data = T.jpeg_bytes(img, quality)
        ops["jpeg_quality"] = quality
        label = job.row.label
        rel = f"{label}/{job.item_id}.jpg"
        tmp = self.out.root / (rel + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, self.out.root / rel)
        row = ManifestRow(
            path=rel,
            label=label,
            generator=job.row.generator,
            source=job.row.source,
            license=job.row.license,
            sha256=hashlib.sha256(data).hexdigest(),
            width=img.width,
            height=img.height,
            format="JPEG",
            split=job.row.split,
            group=job.item_id,
            extra={
                **(job.row.extra or {}),
                "set": "semantic",
                "source_group": job.row.group,
                "source_path": str(job.row.path),
                "source_format": prep.source_format,
                "source_size": list(prep.source_size),
                "ops": ops,
            },
        )
        self.out.append([row])
        self.stats.wrote()


def build_semantic_set(
    rows: Sequence[ManifestRow],
    out_dir: str | Path,
    config: SemanticBuildConfig | None = None,
    *,
    vae: Generator | None = None,
    source_base: str | Path = ".",
    workers: int = 2,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    extra_report: dict[str, Any] | None = None,
) -> BuildResult:
    """Pass every row (real and fake) through the shared chain into ``out_dir``.

    ``rows`` should already be content-balanced (see ``balance.balance_rows``). ``limit`` caps rows
    per class. Re-running with the same config skips finished images."""
    cfg = config or SemanticBuildConfig()
    started = time.perf_counter()
    unknown = sorted({r.label for r in rows} - set(LABELS))
    if unknown:
        raise BuildError(f"rows with labels {unknown}: the semantic builder takes only 'real' and 'fake'")
    for label in LABELS:
        if not any(r.label == label for r in rows):
            raise BuildError(f"no rows labelled {label!r}: a semantic set needs both classes")
    selected = subsample(rows, limit)
    stamp = asdict(cfg)
    stamp.pop("batch_size")
    stamp["vae"] = vae.name if vae is not None else None
    out = OutputDir(Path(out_dir), "semantic", stamp, overwrite=overwrite)
    stats = BuildStats()
    jobs = [_Job(r, stable_id("semantic", row_key(r), r.label)) for r in selected]
    todo = pending(out, jobs, lambda j: j.item_id, 1, stats)
    builder = _SemanticBuilder(cfg, out, Path(source_base), stats, vae is not None)

    def process(batch: list[_Prepared]) -> list[Image.Image]:
        outputs = [p.image for p in batch]
        idx = [i for i, p in enumerate(batch) if p.use_vae]
        if idx and vae is not None:
            builder.calls += 1
            recon = vae.reconstruct([batch[i].image for i in idx])
            for i, img in zip(idx, recon, strict=True):
                outputs[i] = img.convert("RGB")
        return outputs

    run_batched(
        todo,
        builder.prepare,
        process,
        builder.finish,
        workers=workers,
        batch_size=cfg.batch_size,
        total=len(todo),
        desc="build-semantic",
        progress=progress,
    )
    final_rows = out.finalize(keep_groups={j.item_id for j in jobs})
    counts: dict[str, int] = {}
    for r in final_rows:
        key = f"{r.split}/{r.label}"
        counts[key] = counts.get(key, 0) + 1
    result = BuildResult(out.root, final_rows, stats, builder.calls, time.perf_counter() - started, counts)
    report_build(out.root, "semantic", "images", len(jobs), stats, ("vae_calls", builder.calls), result.seconds,
                 counts_by_split_label=counts, **(extra_report or {}))  # fmt: skip
    return result
