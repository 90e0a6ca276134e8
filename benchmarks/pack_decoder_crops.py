"""Pack the photos a decoder trains on as crops small enough to carry to a lent GPU (64 MiB a call).

The photos of a ``train-vae`` run (a folder or a manifest's real rows) are split by image exactly as ``train-vae``
and ``benchmarks/decoder_detail.py`` split them (same ``--val-fraction`` and ``--seed``); only the training side is
packed, so ``decoder_detail.py`` on this box later judges the GPU's decoder on photos it never saw. From each
training photo ``--crops-per-image`` crops of ``--crop`` pixels are cut the way ``train-vae`` cuts them (half at
native resolution, half from a down-scaled copy) and written as JPEG at ``--quality`` without chroma subsampling,
plus ``PACKED.json`` (source, split, counts, bytes). On the GPU, ``train-vae --images OUT --size CROP
--crops-per-image 1`` trains on them (its own held-out crops then come from training photos: read its PSNR as a
training figure, and decoder_detail's as the check).

    python benchmarks/pack_decoder_crops.py --images data:starter/manifest.jsonl --out .carry/crops
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import portable  # noqa: E402

from aligngemini.data.manifest import manifest_path  # noqa: E402
from aligngemini.generators.train_vae import build_crop_pool, list_training_images, split_by_image  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="photos: a folder or a manifest (data:REL or a path)")
    p.add_argument("--out", type=Path, required=True, help="an empty or new folder")
    p.add_argument("--crop", type=int, default=256, help="crop side in pixels, a multiple of 8 (default 256)")
    p.add_argument("--crops-per-image", type=int, default=2, help="crops per training photo (default 2)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="as train-vae's (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="as train-vae's (default 0)")
    p.add_argument("--max-mib", type=float, default=48.0,
                   help="refuse to finish above this size, leaving room for weights and wheels (default 48)")  # fmt: skip
    return p.parse_args(argv)


def pack(args: argparse.Namespace) -> dict[str, Any]:
    source = manifest_path(args.images) if args.images.startswith("data:") else Path(args.images)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} exists and is not empty; choose another --out or empty it")
    train, held_out = split_by_image(list_training_images(source), args.val_fraction, args.seed)
    n_crops = len(train) * args.crops_per_image
    pool, skipped = build_crop_pool(train, args.crop, args.crops_per_image, n_crops, args.seed, desc="pack")
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for i, crop in enumerate(pool):
        path = args.out / f"crop-{i:05d}.jpg"
        Image.fromarray(crop).save(path, quality=args.quality, subsampling=0)
        total += path.stat().st_size
    record = {
        "images": portable(str(source)),
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "training_photos": len(train) - skipped,
        "held_out_photos_left_out": len(held_out),
        "skipped_photos": skipped,
        "crops": len(pool),
        "crop": args.crop,
        "quality": args.quality,
        "mib": round(total / 2**20, 2),
    }
    (args.out / "PACKED.json").write_text(json.dumps(record, indent=1) + "\n")
    if total > args.max_mib * 2**20:
        raise SystemExit(
            f"{args.out}: {total / 2**20:.1f} MiB is over --max-mib {args.max_mib}; lower --crops-per-image or "
            "--quality (the crops are written, for a look)"
        )
    return record


def main(argv: Sequence[str] | None = None) -> int:
    record = pack(parse_args(argv))
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
