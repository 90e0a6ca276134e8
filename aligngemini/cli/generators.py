"""``aligngemini generators ...``: train a VAE of our own, reconstruct images with any generator spec."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aligngemini.generators.base import SPEC_HELP

TRAIN_VAE_EPILOG = """\
examples:
  aligngemini generators train-vae --images photos/ --out VAE_DIR
      2000 steps on 128 px crops of every photo under photos/
  aligngemini generators train-vae --images ~/.cache/aligngemini/data/starter/manifest.jsonl \\
      --split train --out VAE_DIR --max-minutes 30
      the real images of the starter corpus's train split, fitted into half an hour
  aligngemini generators train-vae --images photos/ --out VAE_DIR --resume
      continue an interrupted run from VAE_DIR/checkpoint
  aligngemini generators train-vae --images photos/ --out DEC_DIR --encoder taesd:TAEF2_DIR --size 64
      train only an SD-family decoder on TAEF2's frozen latents (far quicker to beat bicubic than a
      whole VAE); use it as generator 'taesd-kl:DEC_DIR'
  aligngemini generators train-vae --images photos/ --out DEC2_DIR --encoder taesd:TAEF2_DIR --size 64 \\
      --init DEC_DIR --spectral-weight 0.1 --lr 1e-4 --steps 600
      fine-tune that decoder so its reconstructions keep the photos' fine detail energy
  aligngemini generators train-vae --images photos/ --out DEC3_DIR --encoder taesd:TAEF2_DIR --size 128 \\
      --init DEC2_DIR --adversarial-weight 0.5 --lr 1e-4 --steps 2000
      then with a PatchGAN critic, as real VAE decoders are trained (--distill: fit TAEF2's own decoder
      instead of the photos); build pairs with it once the detail ratio it reports nears 1
  aligngemini generators reconstruct photo.jpg --generator vae:VAE_DIR --out recon/
      use the result
"""

RECONSTRUCT_EPILOG = """\
examples:
  aligngemini generators reconstruct photo.jpg --generator vae:VAE_DIR --out recon/
  aligngemini generators reconstruct photos/ 'more/*.jpg' -g esrgan:medium:x2 --out recon/ \\
      --batch-size 8
  aligngemini generators reconstruct photos/ -g taesd:TAEF2_DIR --out recon/ --overwrite -q
"""


def register(sub: argparse._SubParsersAction) -> None:
    from aligngemini.cli import add_quiet

    p = sub.add_parser(
        "train-vae",
        help="train a small AutoencoderKL on photo crops",
        description="Train a small diffusers AutoencoderKL (SD-VAE family: 8x down-sampling; 4 latent channels as "
        "SD 1.x/2.x and SDXL, or 16 as SD3 and FLUX.1 with --latent-channels 16) "
        "on random crops of real photos; the result loads as generator 'vae:OUT'. Writes OUT/config.json, "
        "OUT/diffusion_pytorch_model.safetensors, OUT/MODEL_CARD.md, OUT/metrics.json and a resumable "
        "OUT/checkpoint/. With --encoder taesd:DIR only a decoder is trained, on that frozen encoder's "
        "latents, and the result loads as generator 'taesd-kl:OUT'.",
        epilog=TRAIN_VAE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--images", required=True, help="folder of photos (searched recursively) or a manifest.jsonl "
                   "(only rows with label 'real' are used)")  # fmt: skip
    p.add_argument("--split", default=None,
                   help="with a manifest: use only rows of this split, e.g. train (default: all rows)")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (default: 2000)")
    p.add_argument(
        "--size", type=int, default=128, help="crop side in pixels, a multiple of 8 (default: 128)"
    )
    p.add_argument("--batch-size", "--batch", dest="batch_size", metavar="N", type=int, default=8,
                   help="crops per training step (default: 8)")  # fmt: skip
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default: 3e-4)")
    p.add_argument("--kl-weight", type=float, default=1e-6,
                   help="weight of the KL term on the latent distribution (default: 1e-6)")  # fmt: skip
    p.add_argument("--grad-weight", type=float, default=0.5,
                   help="weight of the image-gradient L1 term (default: 0.5)")  # fmt: skip
    p.add_argument("--spectral-weight", type=float, default=0.0,
                   help="weight of an L1 term on the log energies of spatial-frequency rings, which rewards "
                   "the photos' fine-detail energy that an L1 loss alone averages away (default: 0, off)")  # fmt: skip
    p.add_argument("--adversarial-weight", type=float, default=0.0,
                   help="weight of a PatchGAN critic's hinge loss, trained beside the model and scaled by the SD "
                   "VAE's adaptive weight: what makes real decoders draw the photos' texture (default: 0, off; "
                   "the SD VAE uses 0.5)")  # fmt: skip
    p.add_argument("--distill", action="store_true",
                   help="with --encoder: fit the reconstructions of the encoder folder's own decoder instead of "
                   "the photos; their detail is a function of the latent, so it can be learnt, where an L1 loss "
                   "on photos averages away what the latent lacks")  # fmt: skip
    p.add_argument("--init", default=None, metavar="DIR",
                   help="start from the weights of an earlier train-vae --out of the same architecture (and, "
                   "with --encoder, the same encoder), e.g. to fine-tune it with another loss; a new run with "
                   "its own schedule, unlike --resume")  # fmt: skip
    p.add_argument("--channels", default="32,64,128,128",
                   help="block_out_channels, 4 comma-separated widths (default: 32,64,128,128)")  # fmt: skip
    p.add_argument("--latent-channels", type=int, default=4,
                   help="channels of the latent (default: 4, as SD 1.x/2.x and SDXL; SD3 and FLUX.1 use 16)")  # fmt: skip
    p.add_argument("--encoder", default=None, metavar="taesd:DIR",
                   help="train only an SD-family decoder on the latents of this frozen TAESD-family encoder "
                   "(e.g. taesd:weights/taef2; the folder's own decoder is the PSNR reference); "
                   "--latent-channels then follows the encoder")  # fmt: skip
    p.add_argument("--layers-per-block", type=int, default=1,
                   help="ResNet layers in each encoder/decoder block (default: 1)")  # fmt: skip
    p.add_argument("--crops-per-image", type=int, default=8,
                   help="random crops taken from each training image (default: 8)")  # fmt: skip
    p.add_argument("--max-pool", type=int, default=4000, help="training crops kept in memory (default: 4000)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of images held out for PSNR (default: 0.1)")  # fmt: skip
    p.add_argument("--max-images", type=int, default=None,
                   help="use at most this many images (default: all)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the split, crops and initial weights (default: 0)")  # fmt: skip
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default: 2)")
    p.add_argument("--save-every", type=int, default=250, help="checkpoint interval in steps (default: 250)")
    p.add_argument(
        "--eval-every", type=int, default=250, help="held-out PSNR interval in steps (default: 250)"
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="time budget: plan fewer steps (and their learning-rate schedule) when --steps would not fit "
        "(default: no limit)",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=_train_vae)

    r = sub.add_parser(
        "reconstruct",
        help="write reconstructions of images through a generator",
        description="Reconstruct images (files, folders, globs) through a generator and write one PNG per input "
        f"into --out, same size as the input. {SPEC_HELP}.",
        epilog=RECONSTRUCT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    r.add_argument("--generator", "-g", required=True, metavar="SPEC", help=SPEC_HELP)
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    r.add_argument("--batch-size", "--batch", dest="batch_size", metavar="N", type=int, default=4,
                   help="images handed to the generator at once (default: 4)")  # fmt: skip
    add_quiet(r)
    r.set_defaults(func=_reconstruct)


def _train_vae(args: argparse.Namespace) -> int:
    from aligngemini.generators.train_vae import TrainVAEConfig, TrainVAEError, train_vae

    try:
        channels = tuple(int(c) for c in args.channels.split(","))
    except ValueError:
        print(f"--channels {args.channels!r}: expected comma-separated integers", file=sys.stderr)
        return 2
    cfg = TrainVAEConfig(
        images=args.images,
        split=args.split,
        out=args.out,
        steps=args.steps,
        size=args.size,
        batch=args.batch_size,
        lr=args.lr,
        kl_weight=args.kl_weight,
        grad_weight=args.grad_weight,
        spectral_weight=args.spectral_weight,
        adversarial_weight=args.adversarial_weight,
        distill=args.distill,
        block_out_channels=channels,
        layers_per_block=args.layers_per_block,
        latent_channels=args.latent_channels,
        crops_per_image=args.crops_per_image,
        max_pool=args.max_pool,
        val_fraction=args.val_fraction,
        max_images=args.max_images,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        save_every=args.save_every,
        eval_every=args.eval_every,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
        resume=args.resume,
        overwrite=args.overwrite,
        encoder=args.encoder,
        init=args.init,
    )
    try:
        result = train_vae(cfg)
    except TrainVAEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.val_psnr < result.bicubic_psnr:
        print(
            "warning: held-out PSNR is below bicubic x8 interpolation: undertrained, see MODEL_CARD.md",
            file=sys.stderr,
        )
    print(
        f"trained {result.steps} steps in {result.seconds:.0f} s on {result.n_train_images} images; held-out PSNR "
        f"{result.val_psnr:.2f} dB (bicubic x8: {result.bicubic_psnr:.2f} dB), detail ratio {result.val_detail:.3f} "
        f"(1: the photos' fine detail); load it as "
        f"'{'taesd-kl' if args.encoder else 'vae'}:{result.out}'",
        file=sys.stderr,
    )
    return 0


def output_names(paths: list[Path]) -> list[str]:
    """``<stem>.png`` per input; inputs sharing a stem get ``-2``, ``-3``... in input order."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        stem = p.stem
        n = seen.get(stem, 0) + 1
        seen[stem] = n
        names.append(f"{stem}.png" if n == 1 else f"{stem}-{n}.png")
    return names


def _reconstruct(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from aligngemini.decode import ImageLoadError, iter_image_paths, load_image
    from aligngemini.generators.base import GeneratorSpecError, build_generator
    from aligngemini.generators.tfjs import TFJSError

    not_images: list[str] = []
    paths = list(iter_image_paths(args.inputs, on_skip=lambda p, why: not_images.append(f"{p}: {why}")))
    for line in not_images:
        print(f"skipped {line}", file=sys.stderr)
    if not paths:
        print(f"error: no images found in {' '.join(args.inputs)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    targets = [out / name for name in output_names(paths)]
    existing = [t for t in targets if t.exists()]
    if existing and not args.overwrite:
        shown = ", ".join(str(t) for t in existing[:3]) + (" ..." if len(existing) > 3 else "")
        print(
            f"error: {len(existing)} output(s) exist ({shown}); pass --overwrite to replace them",
            file=sys.stderr,
        )
        return 1
    try:
        generator = build_generator(args.generator, device=args.device)
    except (GeneratorSpecError, TFJSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    failures = len(not_images)
    batch = max(1, args.batch_size)
    with tqdm(total=len(paths), desc=generator.name, unit="img", file=sys.stderr, disable=args.quiet) as bar:
        for start in range(0, len(paths), batch):
            loaded, dests = [], []
            for path, dest in zip(paths[start : start + batch], targets[start : start + batch], strict=True):
                try:
                    loaded.append(load_image(path).image)
                    dests.append(dest)
                except ImageLoadError as exc:
                    print(f"skipped {exc}", file=sys.stderr)
                    failures += 1
            for img, dest in zip(generator.reconstruct(loaded) if loaded else [], dests, strict=True):
                img.save(dest, format="PNG")
            bar.update(len(paths[start : start + batch]))
    written = len(paths) - (failures - len(not_images))
    print(f"wrote {written} reconstruction(s) to {out} with {generator.name}", file=sys.stderr)
    return 1 if failures else 0
