"""The pure-pixel set: real photos paired with their own reconstructions (DDA-style alignment).

Each pair shares its scene exactly, so the only label-carrying signal is the decoder's pixels. Per pair,
in this order, every random choice drawn from the pair's own seed:

1. crop the real to at most ``crop_size`` per side (centre or random, offsets on a 16-pixel grid so a
   JPEG's block grid survives; never resized) and to a multiple of ``multiple_of``; with ``prescale_prob``
   the whole photo is first shrunk by a random factor, as a web page shrinks a photo before serving it, so
   that the reals cover downscaled photos and not only camera-sized ones (both images of the pair then come
   from the shrunk photo);
2. reconstruct the crop with the generator (batched);
3. optionally align the fake's coarse scales to the real (``lowfreq_align_prob``, off by default), then
   pixel-blend and frequency-blend the real into the fake;
4. format alignment: when the real is a JPEG, with ``jpeg_align_prob`` both images are JPEG-encoded at
   the real's estimated quality and chroma subsampling (the real's re-encode on its own grid is nearly
   lossless), so "carries JPEG traces" says nothing about the label;
5. resize alignment: with ``resize_prob`` both get the same random rescale with the same filter.

Both images of a pair are always written in the same format: JPEG when step 4 was the last step,
PNG otherwise.
"""

from __future__ import annotations

import io
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

JPEG_GRID = 16  # 8x8 luma blocks, 16x16 MCUs under 4:2:0
PRESCALE_METHODS = ("box", "bilinear", "hamming", "bicubic", "lanczos")


@dataclass
class PixelBuildConfig:
    """Alignment recipe. Probabilities are per pair; ``*_alpha`` ranges are the weight of the *real*."""

    crop_size: int = 512
    crop: str = "center"  # center | random
    # Pairs per real image and generator. The first crop follows ``crop``; each further one is drawn at a
    # random place, so a large photo gives several native-resolution pairs. An image no larger than the crop
    # gets the same box each time: its pairs differ only in their own alignment draws (blend, JPEG, resize).
    crops_per_image: int = 1
    multiple_of: int = 16
    min_size: int = 64
    pairing: str = "all"  # all: every real with every generator; round-robin: one generator per real
    jpeg_align_prob: float = 0.5
    pixel_blend_prob: float = 0.2
    pixel_blend_alpha: tuple[float, float] = (0.0, 0.8)
    freq_blend_prob: float = 0.2
    freq_blend_alpha: tuple[float, float] = (0.0, 0.8)
    freq_blend_low: float = 0.25  # band [low, inf) of normalised DCT frequency
    resize_prob: float = 0.2
    resize_scale: tuple[float, float] = (0.5, 1.5)
    # Low-frequency alignment: the fake takes the real's square DCT band [0, lowfreq_cut) in both axes,
    # i.e. the real's image down-scaled by lowfreq_cut. Off by default (DDA does not do it); turn it on
    # when the audit's CLIP probe separates pairs because an imperfect decoder drifts in colour or tone,
    # an error visible at the scale semantic models see, not a fine-scale trace.
    lowfreq_align_prob: float = 0.0
    lowfreq_cut: float = 0.25
    resize_methods: tuple[str, ...] = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
    # Shrink the whole photo before cropping (off by default): factor drawn from prescale_scale, with one of
    # prescale_methods (by default PRESCALE_METHODS, the antialiased filters image tools shrink with). A
    # generator whose last step is a shrink (esrgan:...:shrink2 halves its output by area) leaves that history
    # in every fake; prescale_prob=1, prescale_scale=[0.5, 0.5], prescale_methods=[box] gives every real the
    # same last step, so that a shrink carries no label.
    prescale_prob: float = 0.0
    prescale_scale: tuple[float, float] = (0.25, 0.75)
    prescale_methods: tuple[str, ...] = PRESCALE_METHODS
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        self.pixel_blend_alpha = _pair(self.pixel_blend_alpha, "pixel_blend_alpha", 0.0, 1.0)
        self.freq_blend_alpha = _pair(self.freq_blend_alpha, "freq_blend_alpha", 0.0, 1.0)
        self.resize_scale = _pair(self.resize_scale, "resize_scale", 1e-3, 16.0)
        self.prescale_scale = _pair(self.prescale_scale, "prescale_scale", 1e-3, 1.0)
        self.resize_methods = tuple(self.resize_methods)
        self.prescale_methods = tuple(self.prescale_methods)
        bad = [m for m in self.prescale_methods if m not in PRESCALE_METHODS]
        if bad or not self.prescale_methods:
            raise ValueError(
                f"pixel config: prescale_methods must be a non-empty subset of {list(PRESCALE_METHODS)}, "
                f"got {list(self.prescale_methods)}"
            )
        if not 0.0 < self.lowfreq_cut <= 1.5:
            raise ValueError(f"pixel config: lowfreq_cut must be in (0, 1.5], got {self.lowfreq_cut}")
        for name in (
            "jpeg_align_prob",
            "pixel_blend_prob",
            "freq_blend_prob",
            "resize_prob",
            "lowfreq_align_prob",
            "prescale_prob",
        ):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"pixel config: {name} must be a probability in [0, 1], got {value}")
        if self.crop not in ("center", "random"):
            raise ValueError(f"pixel config: crop must be 'center' or 'random', got {self.crop!r}")
        if self.pairing not in ("all", "round-robin"):
            raise ValueError(f"pixel config: pairing must be 'all' or 'round-robin', got {self.pairing!r}")
        if not 1 <= int(self.crops_per_image) <= 64:
            raise ValueError(f"pixel config: crops_per_image must be in [1, 64], got {self.crops_per_image}")
        if self.multiple_of < 1 or self.crop_size < self.multiple_of or self.min_size < 1:
            raise ValueError("pixel config: need 1 <= multiple_of <= crop_size and min_size >= 1")
        for method in self.resize_methods:
            if method not in T.RESAMPLE:
                raise ValueError(
                    f"pixel config: unknown resize method {method!r}; known {sorted(T.RESAMPLE)}"
                )
        if not self.resize_methods:
            raise ValueError("pixel config: resize_methods must not be empty")


def _pair(value: Any, name: str, lo: float, hi: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"config: {name} must be two numbers [low, high], got {value!r}") from None
    if not lo <= a <= b <= hi:
        raise ValueError(f"config: {name} must satisfy {lo} <= low <= high <= {hi}, got {value!r}")
    return a, b


@dataclass
class _Job:
    row: ManifestRow
    generator: str
    pair_id: str
    crop_index: int = 0


@dataclass
class _Prepared:
    job: _Job
    real: Image.Image
    box: tuple[int, int, int, int]
    source_format: str | None
    source_quality: int | None
    subsampling: int | None
    source_size: tuple[int, int]
    prescale: dict[str, Any] | None = None  # the shrink applied to the whole photo before cropping, if any


def plan_pairs(
    rows: Sequence[ManifestRow], generator_names: Sequence[str], cfg: PixelBuildConfig
) -> list[_Job]:
    """Which (real image, generator, crop) pairs to make, each with a stable id (the first crop's id is the
    one sets built before ``crops_per_image`` existed used)."""
    jobs = []
    for i, row in enumerate(rows):
        names = generator_names if cfg.pairing == "all" else [generator_names[i % len(generator_names)]]
        for name in names:
            for k in range(cfg.crops_per_image):
                pair_id = stable_id("pixel", row_key(row), name, *([str(k)] if k else []))
                jobs.append(_Job(row, name, pair_id, k))
    return jobs


def _encode(img: Image.Image, jpeg_data: bytes | None) -> tuple[bytes, str, str]:
    if jpeg_data is not None:
        return jpeg_data, "jpg", "JPEG"
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=4)
    return buf.getvalue(), "png", "PNG"


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class _PixelBuilder(SetBuilder):
    cfg: PixelBuildConfig

    def prepare(self, job: _Job) -> _Prepared | None:
        cfg = self.cfg
        found = self.load(job.row)
        if found is None:
            return None
        path, loaded = found
        image, prescale = self._prescaled(loaded.image, job)
        w, h = image.size
        cw, ch = min(w, cfg.crop_size), min(h, cfg.crop_size)
        cw, ch = cw - cw % cfg.multiple_of, ch - ch % cfg.multiple_of
        if min(cw, ch) < cfg.min_size:
            self.stats.skip("too small", f"{path}: {w}x{h}")
            return None
        fmt = loaded.facts.format
        quality = loaded.facts.jpeg_quality if fmt == "JPEG" else None
        subsampling = None
        if fmt == "JPEG":
            with Image.open(path) as header:
                subsampling = T.jpeg_subsampling(header)
        align = JPEG_GRID if fmt == "JPEG" and prescale is None else 1  # shrinking erased the block grid
        rng = np.random.default_rng([*seed_for(cfg.seed, job.pair_id), 0])
        if cfg.crop == "random" or job.crop_index > 0:
            box = T.random_box(w, h, cw, ch, rng, align=align)
        else:
            box = T.center_box(w, h, cw, ch, align=align)
        return _Prepared(job, image.crop(box), box, fmt, quality, subsampling, loaded.image.size, prescale)

    def _prescaled(self, image: Image.Image, job: _Job) -> tuple[Image.Image, dict[str, Any] | None]:
        """The photo, shrunk with probability ``prescale_prob`` (never below ``min_size`` per side)."""
        cfg = self.cfg
        if cfg.prescale_prob <= 0:  # no draw at all, so that sets built before this option keep their streams
            return image, None
        rng = np.random.default_rng([*seed_for(cfg.seed, job.pair_id), 2])
        if rng.random() >= cfg.prescale_prob:
            return image, None
        scale = float(rng.uniform(*cfg.prescale_scale))
        method = cfg.prescale_methods[int(rng.integers(len(cfg.prescale_methods)))]
        size = (round(image.width * scale), round(image.height * scale))
        if min(size) < cfg.min_size:
            return image, None
        return T.resize(image, size=size, method=method), {"scale": round(scale, 4), "method": method}

    def finish(self, prep: _Prepared, fake: Image.Image) -> None:
        cfg = self.cfg
        job = prep.job
        real = prep.real
        if fake.size != real.size:
            raise BuildError(
                f"generator {job.generator!r} returned {fake.size} for a {real.size} input; "
                "reconstructions must keep the input size"
            )
        fake = fake.convert("RGB")
        rng = np.random.default_rng([*seed_for(cfg.seed, job.pair_id), 1])
        ops: dict[str, Any] = {} if prep.prescale is None else {"prescale": prep.prescale}
        # Drawn only when enabled, so that sets built before this option existed keep their random streams.
        if cfg.lowfreq_align_prob > 0 and rng.random() < cfg.lowfreq_align_prob:
            fake = T.frequency_blend(real, fake, 1.0, band=(0.0, cfg.lowfreq_cut), square=True)
            ops["lowfreq_align"] = cfg.lowfreq_cut
        if rng.random() < cfg.pixel_blend_prob:
            alpha = float(rng.uniform(*cfg.pixel_blend_alpha))
            fake = T.pixel_blend(real, fake, alpha)
            ops["pixel_blend"] = round(alpha, 4)
        if rng.random() < cfg.freq_blend_prob:
            alpha = float(rng.uniform(*cfg.freq_blend_alpha))
            fake = T.frequency_blend(real, fake, alpha, band=(cfg.freq_blend_low, float("inf")))
            ops["freq_blend"] = round(alpha, 4)
        real_jpeg = fake_jpeg = None
        if prep.source_quality is not None and rng.random() < cfg.jpeg_align_prob:
            sub = prep.subsampling if prep.subsampling is not None else 2
            real_jpeg = T.jpeg_bytes(real, prep.source_quality, subsampling=sub)
            fake_jpeg = T.jpeg_bytes(fake, prep.source_quality, subsampling=sub)
            real, fake = T.decode(real_jpeg), T.decode(fake_jpeg)
            ops["jpeg_quality"] = prep.source_quality
        if rng.random() < cfg.resize_prob:
            scale = float(rng.uniform(*cfg.resize_scale))
            method = str(cfg.resize_methods[int(rng.integers(len(cfg.resize_methods)))])
            size = (max(8, round(real.width * scale)), max(8, round(real.height * scale)))
            real = T.resize(real, size=size, method=method)
            fake = T.resize(fake, size=size, method=method)
            real_jpeg = fake_jpeg = None  # the resized pixels are written losslessly
            ops["resize"] = {"scale": round(scale, 4), "method": method, "size": list(size)}
        rows = []
        for label, img, data in (("real", real, real_jpeg), ("fake", fake, fake_jpeg)):
            payload, ext, fmt = _encode(img, data)
            rel = f"{label}/{job.pair_id}.{ext}"
            _write(self.out.root / rel, payload)
            rows.append(
                ManifestRow(
                    path=rel,
                    label=label,
                    generator=job.generator if label == "fake" else None,
                    source=job.row.source,
                    license=job.row.license,
                    sha256=_sha256(payload),
                    width=img.width,
                    height=img.height,
                    format=fmt,
                    split=job.row.split,
                    group=job.pair_id,
                    extra={
                        "set": "pixel",
                        "pair_generator": job.generator,
                        "scene": row_key(job.row),
                        "source_path": str(job.row.path),
                        "source_format": prep.source_format,
                        "source_jpeg_quality": prep.source_quality,
                        "source_size": list(prep.source_size),
                        "crop_box": list(prep.box),
                        "crop_index": job.crop_index,
                        "ops": ops,
                    },
                )
            )
        self.out.append(rows)
        self.stats.wrote()


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def build_pixel_set(
    rows: Sequence[ManifestRow],
    generators: Sequence[Generator],
    out_dir: str | Path,
    config: PixelBuildConfig | None = None,
    *,
    source_base: str | Path = ".",
    workers: int = 2,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildResult:
    """Pair every real row (label ``real``) with its reconstruction by each generator into ``out_dir``.

    ``source_base`` is the folder relative source paths are resolved against (the source manifest's).
    Re-running with the same config skips pairs already written; ``limit`` caps the real images used."""
    cfg = config or PixelBuildConfig()
    if not generators:
        raise BuildError("build-pixel needs at least one generator (--generator SPEC)")
    names = [g.name for g in generators]
    if len(set(names)) != len(names):
        raise BuildError(f"generator names must be distinct, got {names}")
    reals = [r for r in rows if r.label == "real"]
    if not reals:
        raise BuildError("the source manifest has no rows labelled 'real' to reconstruct")
    reals = subsample(reals, limit)
    started = time.perf_counter()
    out = OutputDir(Path(out_dir), "pixel", _stamp(cfg), overwrite=overwrite)
    stats = BuildStats()
    jobs = plan_pairs(reals, names, cfg)
    todo_jobs = pending(out, jobs, lambda j: j.pair_id, 2, stats)
    builder = _PixelBuilder(cfg, out, Path(source_base), stats)
    by_name = dict(zip(names, generators, strict=True))
    for name in names:
        todo = [j for j in todo_jobs if j.generator == name]
        if not todo:
            continue

        def reconstruct(batch: list[_Prepared], gen: Generator = by_name[name]) -> list[Image.Image]:
            builder.calls += 1
            return gen.reconstruct([p.real for p in batch])

        run_batched(
            todo,
            builder.prepare,
            reconstruct,
            builder.finish,
            workers=workers,
            batch_size=cfg.batch_size,
            total=len(todo),
            desc=f"build-pixel {name}",
            progress=progress,
        )
    wanted = {j.pair_id for j in jobs}
    final_rows = out.finalize(keep_groups=None)
    counts: dict[str, int] = {}
    for r in final_rows:
        if r.label == "fake" and str(r.group) in wanted:
            counts[str(r.generator)] = counts.get(str(r.generator), 0) + 1
    result = BuildResult(out.root, final_rows, stats, builder.calls, time.perf_counter() - started, counts)
    report_build(out.root, "pixel", "pairs", len(jobs), stats, ("generator_calls", builder.calls), result.seconds,
                 pairs_by_generator=counts, rows_in_manifest=len(final_rows))  # fmt: skip
    return result


def _stamp(cfg: PixelBuildConfig) -> dict[str, Any]:
    data = asdict(cfg)
    data.pop("batch_size")  # does not change what is written
    if cfg.crops_per_image == 1:  # stamped only when used, so that older sets still resume
        data.pop("crops_per_image")
    if not cfg.lowfreq_align_prob:  # off: stamp as before the option existed, so older sets still resume
        data.pop("lowfreq_align_prob")
        data.pop("lowfreq_cut")
    else:
        data["lowfreq_band"] = "square"  # sets from the radial-band version must not resume into this one
    if not cfg.prescale_prob:  # likewise
        data.pop("prescale_prob")
        data.pop("prescale_scale")
    if not cfg.prescale_prob or cfg.prescale_methods == PRESCALE_METHODS:  # likewise
        data.pop("prescale_methods")
    return data
