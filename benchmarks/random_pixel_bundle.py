"""Write a pixel-only bundle with a randomly initialised timm backbone, for timing the detect path on hardware
where no trained weights are at hand (speed does not depend on the weights).

The default is the paper's pixel expert: DINOv2 ViT-L/14 at 336 px crops, one crop per image.

    python benchmarks/random_pixel_bundle.py --out /tmp/dinov2-l-random
    python benchmarks/throughput.py --bundle /tmp/dinov2-l-random --device cuda --images 4096 --batch-size 128
    python benchmarks/random_pixel_bundle.py --backbone resnet10t --crop 64 --out /tmp/tiny   # a CPU smoke run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from aligngemini.branches.pixel.model import ModelConfig, PixelModel
from aligngemini.bundle import save_bundle


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="vit_large_patch14_dinov2", help="timm model name")
    p.add_argument("--crop", type=int, default=336, help="crop size in pixels (also the ViT's img_size)")
    p.add_argument("--max-crops", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128, help="crops per forward pass on a GPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:  # before building the model
        print(f"{args.out} is not empty; pass --overwrite to replace it", file=sys.stderr)
        return 2
    kwargs = {"img_size": args.crop} if "vit" in args.backbone else {}
    normalize = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    torch.manual_seed(args.seed)
    cfg = ModelConfig(backbone=args.backbone, backbone_kwargs=kwargs, finetune="full", normalize=normalize)
    model = PixelModel.from_config(cfg, load_weights=False)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.export_state_dict().items()}, str(args.out / "pixel.safetensors")
    )
    section = {
        "family": "pixel-timm",
        "weights": "pixel.safetensors",
        "backbone": {"name": args.backbone, "kwargs": kwargs},
        "crop": {"size": args.crop, "inference": "grid", "max_crops": args.max_crops, "combine": "mean"},
        "normalize": normalize,
        "threshold": 0.5,
        "batch_size": args.batch_size,
    }
    config = {
        "name": args.out.name,
        "branches": {"pixel": section},
        "fusion": {"rule": "or", "uncertain_band": None},
    }
    card = f"# {args.out.name}\n\nRandom weights ({args.backbone}, seed {args.seed}): for timing only, never for verdicts.\n"
    bundle = save_bundle(args.out, config, card=card, overwrite=args.overwrite)
    print(f"wrote {bundle.dir} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
