"""How much of a photo's fine detail each reconstruction generator keeps: the check a pair recipe should pass
before an expert is trained on it.

A pure-pixel pair should differ by the generator's trace, not by how soft it is: an expert trained on fakes softer
than their photos learns "soft = fake", which web photos and camera originals contradict. For held-out photo crops
(the images ``train-vae`` holds out with the same seed, so a decoder trained by it is judged on photos it never
saw), each ``--generator`` reconstructs every crop and three numbers are reported, averaged over crops:

- ``psnr``: dB, after 8-bit rounding;
- ``detail_ratio``: high-pass energy (the crop minus its 3x3 box blur) of the reconstructions over the photos',
  summed over crops; 1 keeps the photos' detail energy, below 1 is softer, above 1 adds texture;
- ``band_energy_l1``: mean absolute difference of the log energies of eight rings of spatial frequency (what
  ``train-vae --spectral-weight`` minimises), which ignores where detail lies and counts how much there is.

Bicubic interpolation from 1/8 of the size (what an 8x latent would give with no decoder at all) is the floor row.

    python benchmarks/decoder_detail.py --images data:starter/manifest.jsonl \\
        --generator taesd:../shared/weights/taef2 --generator taesd-kl:$HOME/.cache/aligngemini/data/dec-taef2-kl \\
        --out benchmarks/results/decoder_detail
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import describe_run, portable, record_header, write_record  # noqa: E402

from aligngemini.data.manifest import manifest_path  # noqa: E402
from aligngemini.generators.base import build_generator, to_images, to_tensor  # noqa: E402
from aligngemini.generators.train_vae import (  # noqa: E402
    band_energy_l1,
    bicubic_down_up,
    build_crop_pool,
    detail_ratio,
    list_training_images,
    psnr,
    split_by_image,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="photos: a folder or a manifest (data:REL or a path)")
    p.add_argument("--generator", action="append", required=True, help="a generator spec; give several")
    p.add_argument("--crop", type=int, default=128, help="crop side in pixels, a multiple of 8 (default 128)")
    p.add_argument("--crops", type=int, default=128,
                   help="held-out crops, at least one per held-out photo (default 128)")  # fmt: skip
    p.add_argument("--val-fraction", type=float, default=0.1, help="as train-vae's (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="as train-vae's (default 0)")
    p.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    return p.parse_args(argv)


def detail_scores(recon: torch.Tensor, photos: torch.Tensor) -> dict[str, float]:
    """The three numbers of the module docstring over all crops."""
    return {
        "psnr": psnr(recon, photos),
        "detail_ratio": detail_ratio(recon, photos),
        "band_energy_l1": float(band_energy_l1(recon, photos)),  # a mean over equal-sized crops
    }


def portable_spec(spec: str) -> str:
    """A generator spec with its folder as a reader of the results can follow it."""
    kind, _, folder = spec.partition(":")
    return f"{kind}:{portable(folder)}" if folder and Path(folder).expanduser().exists() else spec


def reconstruct_with(spec: str) -> Callable[[torch.Tensor], torch.Tensor]:
    generator = build_generator(spec, device="cpu")
    return lambda x: to_tensor(generator.reconstruct(to_images(x)))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    record: dict[str, Any] = record_header("decoder_detail", argv, "2-core CPU dev box")
    source = manifest_path(args.images) if args.images.startswith("data:") else Path(args.images)
    _, held_out = split_by_image(list_training_images(source), args.val_fraction, args.seed)
    per_image = max(1, -(-args.crops // len(held_out)))
    pool, skipped = build_crop_pool(held_out, args.crop, per_image, args.crops, args.seed + 1)
    photos = torch.from_numpy(pool).permute(0, 3, 1, 2).float().div(255)
    rows: dict[str, dict[str, float]] = {}
    t0 = time.time()
    for name, run in [
        ("bicubic x8 (no decoder)", bicubic_down_up),
        *((g, reconstruct_with(g)) for g in args.generator),
    ]:
        recon = torch.cat([run(photos[i : i + 16]) for i in range(0, len(photos), 16)])
        rows[name] = detail_scores(recon, photos)
        print(f"{name}: {rows[name]}", file=sys.stderr)
    record.update({
        "images": portable(str(source)), "held_out_images": len(held_out) - skipped, "crops": len(photos),
        "crop": args.crop, "seconds": round(time.time() - t0, 1),
        "generators": {portable_spec(k): v for k, v in rows.items()},
    })  # fmt: skip
    write_record(args.out, record, render_md(record))
    print(render_md(record))
    return 0


def render_md(record: dict[str, Any]) -> str:
    lines = [
        "# How much of a photo's fine detail each reconstruction keeps",
        "",
        describe_run(
            record,
            f"{record['crops']} crops of {record['crop']} px from {record['held_out_images']} "
            f"held-out photos of `{record['images']}`, {record['seconds']:.0f} s",
        )
        + ".",  # fmt: skip
        "",
        "Detail ratio: high-pass energy of the reconstruction over the photo's (1: as much fine detail; below: "
        "softer). Ring-energy L1: how far its energy in eight rings of frequency is from the photo's, wherever the "
        "detail lies.",
        "",
        "| generator | PSNR (dB) | detail ratio | ring-energy L1 |",
        "| --- | --- | --- | --- |",
    ]
    for name, r in record["generators"].items():
        lines.append(f"| `{name}` | {r['psnr']:.2f} | {r['detail_ratio']:.3f} | {r['band_energy_l1']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
