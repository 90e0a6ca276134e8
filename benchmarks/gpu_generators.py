"""Generators on a GPU: train our small VAE on real photos within a time budget, then time and check the VAE
and ESRGAN reconstructions on full-size photos (fp16 against fp32, the GPU against the CPU).

Run on a machine with CUDA (the photos: realorai's real/ folder or any folder of photos; the ESRGAN package
tarball in a folder named by ALIGNGEMINI_NPM_DIR when there is no registry):

  python benchmarks/gpu_generators.py --photos DIR --out OUT [--minutes 4]

Writes OUT/gpu_generators.json and OUT/vae/ (config.json, diffusion_pytorch_model.safetensors, MODEL_CARD.md,
metrics.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from aligngemini.decode import load_image
from aligngemini.generators.esrgan import ESRGANGenerator
from aligngemini.generators.train_vae import TrainVAEConfig, list_training_images, split_by_image, train_vae
from aligngemini.generators.vae import VAEGenerator


def psnr8(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mse = max(float(((a - b) ** 2).mean()), 1e-6)
    return 10 * np.log10(255.0**2 / mse)


def mean_psnr(xs: list, ys: list) -> float:
    return round(float(np.mean([psnr8(a, b) for a, b in zip(xs, ys, strict=True)])), 2)


def timed(fn, images, device: str) -> tuple[list, float]:
    fn(images[:1])  # warm-up (cuDNN autotune, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(images)
    if device == "cuda":
        torch.cuda.synchronize()
    return out, len(images) / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument(
        "--latent-channels", type=int, default=4, help="4 as SD 1.x/2.x and SDXL; 16 as SD3 and FLUX.1"
    )
    parser.add_argument("--n-eval", type=int, default=8, help="held-out photos for the reconstruction checks")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = args.device
    report: dict = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
    }

    # 1. train the VAE
    work = Path("/tmp/aligngemini-gpu-vae")
    cfg = TrainVAEConfig(
        images=args.photos, out=str(work), steps=args.steps, size=128, batch=args.batch, lr=args.lr,
        latent_channels=args.latent_channels, crops_per_image=40, max_pool=12000, eval_every=500,
        save_every=10**9, device=device,
        max_seconds=args.minutes * 60, overwrite=True,
    )  # fmt: skip
    result = train_vae(cfg)
    (out / "vae").mkdir(exist_ok=True)
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "MODEL_CARD.md", "metrics.json"):
        shutil.copy2(work / name, out / "vae" / name)
    report["train_vae"] = {
        "steps": result.steps, "seconds": round(result.seconds, 1), "batch": args.batch, "size": 128,
        "latent_channels": args.latent_channels,
        "val_psnr_db": round(result.val_psnr, 2), "bicubic_x8_psnr_db": round(result.bicubic_psnr, 2),
        "train_images": result.n_train_images, "val_images": result.n_val_images, "history": result.history,
    }  # fmt: skip
    print(json.dumps(report["train_vae"]), file=sys.stderr, flush=True)

    # held-out photos at full size, for the reconstruction checks
    _, val_paths = split_by_image(list_training_images(args.photos), cfg.val_fraction, cfg.seed)
    photos = [load_image(p).image for p in val_paths[: args.n_eval]]
    report["eval_photos"] = {"n": len(photos), "sizes": sorted({p.size for p in photos})}

    # 2. the VAE generator: fp16 vs fp32, tiled (tile 512) vs whole image
    vae16 = VAEGenerator(work, device=device)
    rec16, ips16 = timed(vae16.reconstruct, photos, device)
    vae32 = VAEGenerator(work, device=device, dtype=torch.float32)
    rec32, ips32 = timed(vae32.reconstruct, photos, device)
    tiled = VAEGenerator(work, device=device, dtype=torch.float32, tile=512).reconstruct(photos[:2])
    report["vae_generator"] = {
        "images_per_s_fp16": round(ips16, 2),
        "images_per_s_fp32": round(ips32, 2),
        "psnr_vs_original_fp16_db": mean_psnr(rec16, photos),
        "psnr_fp16_vs_fp32_db": mean_psnr(rec16, rec32),
        "psnr_tiled512_vs_whole_db": mean_psnr(tiled, rec32[:2]),
        "sizes_kept": all(a.size == b.size for a, b in zip(rec16, photos, strict=True)),
    }
    print(json.dumps(report["vae_generator"]), file=sys.stderr, flush=True)

    # 3. ESRGAN medium: fp16 vs fp32 on the GPU, GPU vs CPU on a crop
    report["esrgan"] = {}
    for scale in (2, 4):
        g16 = ESRGANGenerator("medium", scale, device=device)
        r16, e16 = timed(g16.reconstruct, photos, device)
        g32 = ESRGANGenerator("medium", scale, device=device, dtype=torch.float32)
        r32, e32 = timed(g32.reconstruct, photos, device)
        crop = [photos[0].crop((0, 0, 256, 256))]
        cpu = ESRGANGenerator("medium", scale, device="cpu").reconstruct(crop)[0]
        gpu = g32.reconstruct(crop)[0]
        diff = np.abs(np.asarray(cpu, dtype=int) - np.asarray(gpu, dtype=int))
        report["esrgan"][f"medium_x{scale}"] = {
            "images_per_s_fp16": round(e16, 2),
            "images_per_s_fp32": round(e32, 2),
            "psnr_vs_original_fp16_db": mean_psnr(r16, photos),
            "psnr_fp16_vs_fp32_db": mean_psnr(r16, r32),
            "gpu_fp32_vs_cpu_max_8bit_diff": int(diff.max()),
            "sizes_kept": all(a.size == b.size for a, b in zip(r16, photos, strict=True)),
        }
        print(json.dumps(report["esrgan"][f"medium_x{scale}"]), file=sys.stderr, flush=True)

    (out / "gpu_generators.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
