"""An experiment's pair set: a built pure-pixel set's pairs of one generator, each fake's fine detail matched to
its photo's.

An up-sampler's reconstruction of a shrunk photo carries less fine detail than the photo, so an expert trained on
such pairs can learn "soft = fake", a cue that web photos (shrunk, so crisp) and camera originals (often soft)
contradict. Here every radial DCT ring of the fake above a quarter of Nyquist (by default ``[0.25, 0.5)``,
``[0.5, 0.75)``, ``[0.75, 1)``, ``[1, inf)``) is scaled, all three channels alike, so that its grey energy equals
the photo's (the gain clipped to ``[1 / max_gain, max_gain]``): what the up-sampler drew there stays, how much of
it does not. The photos are the source set's own files; each new fake is written in its pair's format (a JPEG
pair's fake re-encoded at the pair's quality and the photo's chroma subsampling), so the format says nothing.

    python benchmarks/energy_matched_pairs.py --src data:pixel-wild-taef2-esrgan-x5/manifest.jsonl \\
        --generator 'esrgan*' --out ~/.cache/aligngemini/data/pixel-wild-esrgan-matched-x5

The new manifest names the photos where they are (absolute paths) and the new fakes under ``--out``; train on it
with ``--opt data.manifest=...`` as on any pixel set. This is a measuring tool, not a build step of the package:
the pairs it makes measured worse (``benchmarks/results/pixel_experts.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import fft as sfft

from aligngemini.data import transforms as T
from aligngemini.data.manifest import ManifestRow, read_manifest, write_manifest

GREY = np.array([0.299, 0.587, 0.114])


def match_band_energy(
    real: Image.Image, fake: Image.Image, edges: Sequence[float], max_gain: float = 4.0
) -> Image.Image:
    """``fake`` with each radial DCT ring ``[edges[i], edges[i + 1])`` (``transforms.frequency_mask``'s
    frequencies) scaled so that its grey energy equals ``real``'s, the gain clipped to ``[1/max_gain, max_gain]``."""
    if max_gain < 1.0:
        raise ValueError(f"max_gain must be at least 1, got {max_gain}")
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError(f"edges must be at least two increasing frequencies, got {tuple(edges)}")
    if real.size != fake.size:
        raise ValueError(f"a pair needs one size, got real {real.size} and fake {fake.size}")
    r = np.asarray(real.convert("RGB"), dtype=np.float64)
    f = np.asarray(fake.convert("RGB"), dtype=np.float64)
    rd = sfft.dctn(r, axes=(0, 1), norm="ortho")
    fd = sfft.dctn(f, axes=(0, 1), norm="ortho")
    rg, fg = rd @ GREY, fd @ GREY
    for lo, hi in zip(edges, edges[1:], strict=False):
        ring = T.frequency_mask(r.shape[0], r.shape[1], (lo, hi))
        have = float(np.sum(fg[ring] ** 2))
        if have == 0.0:
            continue  # nothing there to scale
        gain = math.sqrt(float(np.sum(rg[ring] ** 2)) / have)
        fd[ring] *= min(max(gain, 1.0 / max_gain), max_gain)
    out = sfft.idctn(fd, axes=(0, 1), norm="ortho")
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def encoded_like(fake: Image.Image, pair_fake: ManifestRow, real: Image.Image) -> tuple[bytes, str]:
    """The new fake's bytes in its pair's format: JPEG at the pair's quality and the photo's chroma
    subsampling when the pair is a JPEG pair, else PNG."""
    if pair_fake.format == "JPEG":
        quality = int(pair_fake.extra["ops"]["jpeg_quality"])
        return T.jpeg_bytes(fake, quality, subsampling=T.jpeg_subsampling(real)), "jpg"
    buf = io.BytesIO()
    fake.save(buf, format="PNG")
    return buf.getvalue(), "png"


def matched_set(src: str, generator: str, out: Path, edges: Sequence[float], max_gain: float) -> int:
    """Write ``out/manifest.jsonl`` and ``out/fake/*``; returns the number of pairs."""
    pairs: dict[str, dict[str, ManifestRow]] = {}
    for row in read_manifest(src):
        pairs.setdefault(row.group or "", {})[row.label] = row
    chosen = {
        g: p
        for g, p in pairs.items()
        if "fake" in p and fnmatch.fnmatchcase(p["fake"].generator or "", generator)
    }
    if not chosen:
        raise SystemExit(f"{src}: no pair's fake has a generator matching {generator!r}")
    if (out / "manifest.jsonl").exists():
        raise SystemExit(f"{out / 'manifest.jsonl'} exists; remove it or choose another --out")
    (out / "fake").mkdir(parents=True, exist_ok=True)
    rows: list[ManifestRow] = []
    for i, (group, pair) in enumerate(sorted(chosen.items()), 1):
        real = Image.open(pair["real"].path)
        real.load()
        fake = match_band_energy(real, Image.open(pair["fake"].path), edges, max_gain)
        data, ext = encoded_like(fake, pair["fake"], real)
        path = out / "fake" / f"{group}.{ext}"
        path.write_bytes(data)
        ops = {
            **pair["fake"].extra.get("ops", {}),
            "band_energy_match": list(edges[:-1]),
            "max_gain": max_gain,
        }
        rows += [
            pair["real"],
            dataclasses.replace(
                pair["fake"],
                path=str(path.resolve()),
                sha256=hashlib.sha256(data).hexdigest(),
                generator=f"{pair['fake'].generator}+match",
                extra={**pair["fake"].extra, "ops": ops},
            ),
        ]
        if i % 500 == 0:
            print(f"{i} / {len(chosen)} pairs", file=sys.stderr, flush=True)
    write_manifest(rows, out / "manifest.jsonl")
    return len(chosen)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, help="a built pixel set's manifest (a path or data:REL)")
    p.add_argument("--generator", required=True, help="a glob on the fakes' generator, e.g. 'esrgan*'")
    p.add_argument(
        "--out", type=Path, required=True, help="a new folder for the matched fakes and the manifest"
    )
    p.add_argument("--edges", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0],
                   help="ring edges in frequencies of Nyquist (the last ring runs on to the corner)")  # fmt: skip
    p.add_argument("--max-gain", type=float, default=4.0)
    args = p.parse_args(argv)
    n = matched_set(args.src, args.generator, args.out.expanduser(), [*args.edges, math.inf], args.max_gain)
    print(f"{n} pairs -> {args.out / 'manifest.jsonl'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
