"""Train a small ``diffusers.AutoencoderKL`` of our own on photo crops: a VAE generator no hub is needed for.

Architecture: the SD-VAE family (DownEncoderBlock2D/UpDecoderBlock2D, 8x down-sampling through three
down-samplers, 4 latent channels, a mid-block with attention), only narrower, so that it trains on a CPU
in minutes at 128 px and properly on a GPU.

Data: random crops of real photos, cut once into an in-memory pool (half at native resolution, half from a
randomly down-scaled copy), split by image into train and held-out crops. Loss: L1 + image-gradient L1
(a cheap perceptual substitute that rewards sharp edges) + a tiny KL term, as in SD's VAE; optionally an L1 on
the log energies of spatial-frequency rings (``spectral_weight``, :func:`band_energy_l1`), which asks for the
photos' fine-detail energy whatever its phase, as the adversarial and perceptual losses of real VAEs do and L1
alone does not; optionally the adversarial term itself (``adversarial_weight``: a PatchGAN critic trained beside
the model with the hinge loss, its push scaled by the SD VAE's adaptive weight). Every evaluation records the
held-out PSNR and the detail ratio (:func:`detail_ratio`), the check a decoder should pass before pure-pixel
pairs are built with it. ``init`` starts a new run (its own schedule and card) from an earlier output's weights, e.g. to
fine-tune a decoder with that term.

Output: ``save_pretrained`` (safetensors) so that ``vae:<out>`` loads it, plus ``MODEL_CARD.md`` and
``metrics.json``. A checkpoint under ``<out>/checkpoint`` makes runs resumable (``resume=True``).

With ``encoder="taesd:<folder>"`` only the decoder is trained, on the latents of that frozen TAESD-family encoder
(its latent channels, not ``latent_channels``), with L1 + gradient-L1 and no KL term; the folder then loads as
``taesd-kl:<out>`` (:mod:`aligngemini.generators.latent_decoder`). The TAESD folder's own decoder is the held-out
PSNR reference, so the folder needs both halves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from aligngemini.generators.latent_decoder import (
    DECODER_CONFIG,
    DECODER_FILE,
    ENCODER_FILE,
    ENCODER_LICENSE,
    kl_decoder,
    save_latent_decoder,
)

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL

MANIFEST_SUFFIXES = (".jsonl", ".json")
VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"  # what AutoencoderKL.save_pretrained writes


class TrainVAEError(ValueError):
    """Bad training input or output location; the message says what to change."""


@dataclass
class TrainVAEConfig:
    images: str  # a folder of photos (recursive) or a manifest.jsonl (rows with label "real" are used)
    out: str
    split: str | None = None  # with a manifest: only rows of this split (e.g. "train")
    steps: int = 2000
    size: int = 128  # crop side, a multiple of 8
    batch: int = 8
    lr: float = 3e-4
    warmup: int = 50
    kl_weight: float = 1e-6
    grad_weight: float = 0.5
    # log ring-energy L1 (band_energy_l1): rewards the photo's fine-detail energy whatever its phase, which an L1 loss
    # alone averages away (an L1-trained decoder comes back softer than its photos)
    spectral_weight: float = 0.0
    # a PatchGAN critic's hinge loss, scaled as the SD VAE scales it (by the ratio of the reconstruction loss's and
    # its own gradient norms at the decoder's last layer): real VAE decoders draw texture because of this term
    adversarial_weight: float = 0.0
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)
    layers_per_block: int = 1
    latent_channels: int = 4
    crops_per_image: int = 8
    max_pool: int = 4000  # crops kept in memory (uint8, 3*size*size bytes each)
    val_fraction: float = 0.1
    max_val_crops: int = 256
    max_images: int | None = None
    seed: int = 0
    device: str | None = None
    threads: int | None = 2  # CPU threads; None leaves torch's default
    save_every: int = 250
    eval_every: int = 250
    # time budget: after 30 steps, fewer steps (and their schedule) are planned when ``steps`` would not fit
    max_seconds: float | None = None
    resume: bool = False
    overwrite: bool = False
    encoder: str | None = None  # "taesd:<folder>": train only a decoder, on this frozen encoder's latents
    init: str | None = None  # an earlier output of the same architecture whose weights start a new run
    # with ``encoder``: fit the encoder folder's own decoder's reconstructions, not the photos. Their detail is a
    # function of the latent, so it can be learnt exactly, where a photo's finest detail is not in the latent and
    # an L1 loss averages it away
    distill: bool = False

    def arch(self) -> dict[str, Any]:
        """The fields that must match for a checkpoint to be resumed."""
        arch: dict[str, Any] = {
            "size": self.size,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "latent_channels": self.latent_channels,
        }
        if self.encoder:  # only then, so that checkpoints of whole VAEs written before this key still resume
            arch["encoder"] = self.encoder
        if self.adversarial_weight:  # the checkpoint then also holds the critic
            arch["adversarial"] = True
        return arch

    def encoder_folder(self) -> Path | None:
        """The TAESD-family folder ``encoder`` names; :class:`TrainVAEError` for any other spec."""
        if not self.encoder:
            return None
        kind, _, folder = self.encoder.partition(":")
        if kind != "taesd" or not folder:
            raise TrainVAEError(
                f"--encoder {self.encoder!r}: expected 'taesd:<folder>' (e.g. taesd:weights/taef2)"
            )
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise TrainVAEError(f"--encoder {self.encoder!r}: {path} is not a folder")
        return path


@dataclass
class TrainVAEResult:
    out: Path
    steps: int
    seconds: float
    val_psnr: float  # dB, latent-mean reconstruction of held-out crops
    val_detail: float  # held-out detail ratio (:func:`detail_ratio`): 1 keeps the photos' fine detail
    bicubic_psnr: float  # dB, bicubic x8 down-and-up of the same crops: the floor a f8 VAE must beat
    n_train_images: int
    n_val_images: int
    history: list[dict[str, float]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- data


def _read_manifest_rows(path: Path) -> list[tuple[str, str | None, str | None]]:
    """(path, label, split) per row, through the project's one manifest reader."""
    from aligngemini.data.manifest import read_manifest

    try:
        rows = read_manifest(path)
    except ValueError as exc:
        raise TrainVAEError(str(exc)) from exc
    return [(str(row.path), row.label, row.split) for row in rows]


def list_training_images(source: str | Path, split: str | None = None) -> list[Path]:
    """Photos to train on: every image under a folder, or the rows labelled ``real`` of a manifest (only those
    of ``split`` when given; relative paths resolve against the manifest's folder)."""
    from aligngemini.decode import iter_image_paths

    src = Path(source).expanduser()
    if src.is_dir():
        if split is not None:
            raise TrainVAEError(f"{src}: --split needs a manifest, not a folder")
        paths = list(iter_image_paths([src]))
    elif src.is_file() and src.suffix.lower() in MANIFEST_SUFFIXES:
        rows = _read_manifest_rows(src)
        paths = []
        for p, label, row_split in rows:
            if label != "real" or (split is not None and row_split != split):
                continue
            q = Path(p).expanduser()
            paths.append(q if q.is_absolute() else src.parent / q)
        if rows and not paths:
            which = f" in split {split!r}" if split else ""
            raise TrainVAEError(f"{src}: no row has label 'real'{which}; the VAE trains on real photos only")
    else:
        raise TrainVAEError(f"{src}: expected a folder of images or a manifest .jsonl file")
    if not paths:
        raise TrainVAEError(f"{src}: no images found")
    return sorted(paths)


def split_by_image(paths: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Deterministic split by image (a hash of the file name and the seed), so crops of one photo never
    sit on both sides."""
    if len(paths) < 2:
        warnings.warn(
            "one training image only: the held-out crops come from the training image", stacklevel=3
        )
        return paths, paths
    key = lambda p: hashlib.sha256(f"{seed}:{p.name}:{p}".encode()).hexdigest()  # noqa: E731
    ordered = sorted(paths, key=key)
    n_val = min(len(paths) - 1, max(1, round(len(paths) * val_fraction)))
    return sorted(ordered[n_val:]), sorted(ordered[:n_val])


def _cut_crops(img: Image.Image, size: int, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` random crops: half at native resolution, half from one copy down-scaled by a random factor (never
    below the crop size), so the VAE sees both sensor-level texture and whole-object structure."""
    w, h = img.size
    small_side = min(w, h)
    sources = [img]
    lo = max(size / small_side, 0.25)
    if n > 1 and lo < 1.0:
        s = float(rng.uniform(lo, 1.0))
        sources.append(
            img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.LANCZOS)
        )
    crops: list[np.ndarray] = []
    for k in range(n):
        src = sources[k % len(sources)]
        sw, sh = src.size
        x0 = int(rng.integers(0, sw - size + 1))
        y0 = int(rng.integers(0, sh - size + 1))
        crops.append(np.asarray(src.crop((x0, y0, x0 + size, y0 + size)), dtype=np.uint8))
    return crops


def build_crop_pool(
    paths: list[Path], size: int, crops_per_image: int, max_crops: int, seed: int, desc: str = "crops"
) -> tuple[np.ndarray, int]:
    """[N, size, size, 3] uint8 crops from ``paths`` and how many images were skipped (unreadable/too small)."""
    from tqdm import tqdm

    from aligngemini.decode import ImageLoadError, load_image

    per_image = max(1, min(crops_per_image, max_crops // max(1, len(paths))))
    rng = np.random.default_rng(seed)
    crops: list[np.ndarray] = []
    skipped = 0
    for p in tqdm(paths, desc=desc, unit="img", file=sys.stderr, leave=False):
        try:
            img = load_image(p).image
        except ImageLoadError as exc:
            warnings.warn(f"skipping {exc}", stacklevel=2)
            skipped += 1
            continue
        if min(img.size) < size:
            skipped += 1
            continue
        crops.extend(_cut_crops(img, size, per_image, rng))
    if not crops:
        return np.zeros((0, size, size, 3), np.uint8), skipped
    return np.stack(crops), skipped


# ---------------------------------------------------------------------------------------------- model


def small_vae(cfg: TrainVAEConfig) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    if n != 4:
        raise TrainVAEError("block_out_channels needs 4 entries (8x down-sampling: 3 down-samplers)")
    groups = math.gcd(32, *cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=groups,
        sample_size=cfg.size,
    )


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) over a batch of images in [0, 1], each image's MSE taken after 8-bit rounding."""
    import torch

    a8 = a.clamp(0, 1).mul(255).round()
    b8 = b.clamp(0, 1).mul(255).round()
    mse = (a8 - b8).pow(2).flatten(1).mean(1).clamp_min(1e-3)
    return float((10 * torch.log10(255.0**2 / mse)).mean())


def _grad_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


def band_energy_l1(a: torch.Tensor, b: torch.Tensor, bands: int = 8, floor: float = 1e-6) -> torch.Tensor:
    """L1 between the log energies of ``bands`` rings of spatial frequency (orthonormal 2-D FFT, per image and
    channel, mean power per ring). Ring energies ignore where detail lies (the phase) and, unlike a per-frequency
    log, are set by the strong components that carry a photo's detail, not by the many weak ones. ``floor``
    (about the power of 8-bit quantisation noise) keeps near-empty rings from counting."""
    import torch

    h, w = a.shape[-2:]
    fy, fx = torch.fft.fftfreq(h)[:, None], torch.fft.rfftfreq(w)[None, :]
    radius = torch.hypot(fy, fx) / math.sqrt(0.5)  # 1 at the spectrum's corner
    ring = (radius * bands).long().clamp(max=bands - 1).flatten().to(a.device)
    members = torch.nn.functional.one_hot(ring, bands).float()  # [h * (w // 2 + 1), bands]
    members = members / members.sum(0)  # each ring's mean

    def log_ring_power(x: torch.Tensor) -> torch.Tensor:
        power = torch.fft.rfft2(x.float(), norm="ortho").abs().pow(2).flatten(-2)
        return torch.log(power @ members + floor)

    return (log_ring_power(a) - log_ring_power(b)).abs().mean()


def patch_discriminator(width: int = 32) -> torch.nn.Module:
    """A PatchGAN critic (the pix2pix shape the SD VAE's discriminator has, narrower): one logit per 34-pixel
    patch of an image in [-1, 1]. Spectral normalisation keeps it stable over the few hundred steps a CPU run
    has."""
    from torch import nn
    from torch.nn.utils.parametrizations import spectral_norm

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [spectral_norm(nn.Conv2d(cin, cout, 4, stride, 1)), nn.LeakyReLU(0.2)]

    return nn.Sequential(
        *block(3, width, 2), *block(width, 2 * width, 2), *block(2 * width, 4 * width, 1),
        nn.Conv2d(4 * width, 1, 4, 1, 1),
    )  # fmt: skip


def adaptive_weight(rec_loss: torch.Tensor, adv_loss: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """The SD VAE's balance of the two losses: the ratio of their gradient norms at the decoder's last weight, so
    that the critic's push is as strong as the reconstruction's whatever their scales."""
    import torch

    g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv_loss, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0, 1e4).detach()


def _vae_roundtrip(model: AutoencoderKL) -> Callable[[torch.Tensor], torch.Tensor]:
    """[B, 3, H, W] in [0, 1] -> the reconstruction from the latent mean, in [-1, 1]."""
    return lambda x: model.decode(model.encode(x * 2 - 1).latent_dist.mode()).sample


def _evaluate(
    model: torch.nn.Module,
    roundtrip: Callable[[torch.Tensor], torch.Tensor],
    val: torch.Tensor,
    device: torch.device,
    batch: int,
) -> tuple[float, float]:
    """Held-out PSNR (dB) and detail ratio (:func:`detail_ratio`) of the round trip."""
    import torch

    was_training = model.training
    model.eval()
    scores: list[tuple[float, int]] = []
    energy = [0.0, 0.0]  # high-pass energy summed over crops: reconstructions, photos
    with torch.inference_mode():
        for i in range(0, len(val), batch):
            x = val[i : i + batch].to(device).float().div(255)
            rec = ((roundtrip(x).float() + 1) / 2).clamp(0, 1)
            scores.append((psnr(rec, x), len(x)))
            energy[0] += detail_energy(rec)
            energy[1] += detail_energy(x)
    model.train(was_training)
    mean_psnr = sum(s * n for s, n in scores) / max(1, sum(n for _, n in scores))
    return mean_psnr, energy[0] / max(energy[1], 1e-12)


def high_pass(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] minus its 3x3 box blur (replicated edges): the finest detail of an image."""
    import torch.nn.functional as F

    c = x.shape[1]
    kernel = x.new_full((c, 1, 3, 3), 1 / 9)
    return x - F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)


def detail_energy(x: torch.Tensor) -> float:
    """High-pass energy of a batch, summed over its crops (the sum, so that batches add up)."""
    return float(high_pass(x).pow(2).sum())


def detail_ratio(recon: torch.Tensor, photos: torch.Tensor) -> float:
    """High-pass energy of the reconstructions over the photos' (summed over crops, so that nearly flat crops do
    not dominate): 1 keeps the photos' fine detail, below 1 is softer, above 1 adds texture. A pure-pixel pair
    whose fake is softer than its photo teaches an expert "soft = fake", which web photos contradict."""
    return detail_energy(recon) / max(detail_energy(photos), 1e-12)


def bicubic_down_up(x: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] shrunk ``factor`` times by area and brought back by bicubic interpolation: what an
    autoencoder with that down-sampling would give with no decoder at all, the floor it must beat."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(h // factor, w // factor), mode="area")
    return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


def _bicubic_psnr(val: torch.Tensor, factor: int = 8) -> float:
    x = val.float().div(255)
    return psnr(bicubic_down_up(x, factor), x)


# ------------------------------------------------------------------------------------- checkpointing


CHECKPOINT_STATE = "trainer.json"  # the one trainer's checkpoint layout (aligngemini.train.checkpoint)


def _save_checkpoint(
    ckpt: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Model and optimizer as safetensors plus a JSON of the rest, in the one trainer's checkpoint layout;
    written to a temp folder then swapped in."""
    from aligngemini.train import checkpoint

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = [n for n, _ in model.named_parameters()]
    model_state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    checkpoint.write_model_and_optimizer(tmp, model_state, opt.state_dict(), names, state)
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(ckpt: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    from aligngemini.train import checkpoint

    cp = checkpoint.read_checkpoint(ckpt)
    model.load_state_dict(cp.model)
    opt.load_state_dict(cp.optimizer)
    return cp.trainer


def _lr_at(step: int, cfg: TrainVAEConfig, total: int) -> float:
    """The one trainer's schedule: linear warm-up, then cosine down to a tenth of the peak."""
    from aligngemini.train.trainer import lr_factor

    return cfg.lr * lr_factor(step, total, cfg.warmup, "cosine", min_ratio=0.1)


def _init_folder(cfg: TrainVAEConfig, encoder_folder: Path | None) -> Path | None:
    """The ``init`` folder, checked before anything is written: an output of the same mode, architecture and
    (for a decoder) encoder; :class:`TrainVAEError` names the fix."""
    if not cfg.init:
        return None
    folder = Path(cfg.init).expanduser()
    weights, config = (DECODER_FILE, DECODER_CONFIG) if cfg.encoder else (VAE_WEIGHTS, "config.json")
    if not (folder / weights).is_file() or not (folder / config).is_file():
        what = "a decoder trained with --encoder" if cfg.encoder else "a whole VAE trained without --encoder"
        raise TrainVAEError(
            f"--init {cfg.init}: no {weights} and {config} there; give the --out folder of {what}"
        )
    if folder.resolve() == Path(cfg.out).expanduser().resolve():
        raise TrainVAEError(f"--init {cfg.init} is --out; to continue a run in place pass --resume")
    saved, wanted = json.loads((folder / config).read_text()), cfg.arch()
    keys = ("block_out_channels", "layers_per_block", "latent_channels")
    if any(saved.get(k) != wanted[k] for k in keys):
        raise TrainVAEError(
            f"--init {cfg.init}: its architecture { {k: saved.get(k) for k in keys} } differs from this run's "
            f"{ {k: wanted[k] for k in keys} }; give --channels, --layers-per-block and --latent-channels as it did"
        )
    if encoder_folder is not None:
        from aligngemini.generators.taesd import weights_file

        copy = folder / ENCODER_FILE
        if not copy.is_file() or copy.read_bytes() != weights_file(encoder_folder, "encoder").read_bytes():
            raise TrainVAEError(f"--init {cfg.init}: its decoder was trained on another encoder's latents")
    return folder


def _load_init(folder: Path, model: torch.nn.Module, decoder_only: bool) -> None:
    """Copy the weights of an earlier output (checked by :func:`_init_folder`) into ``model``."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(folder / (DECODER_FILE if decoder_only else VAE_WEIGHTS)))


def _prepare_out(cfg: TrainVAEConfig) -> Path:
    out = Path(cfg.out).expanduser()
    ckpt = out / "checkpoint"
    if out.exists() and any(out.iterdir()):
        if cfg.resume and (ckpt / CHECKPOINT_STATE).is_file():
            return out
        if not cfg.overwrite:
            hint = "pass --resume to continue it or " if (ckpt / CHECKPOINT_STATE).is_file() else ""
            raise TrainVAEError(
                f"{out} exists and is not empty; {hint}pass --overwrite or choose another --out"
            )
        for name in (
            "checkpoint",
            "config.json",
            VAE_WEIGHTS,
            ENCODER_FILE,
            ENCODER_LICENSE,
            DECODER_FILE,
            DECODER_CONFIG,
            "MODEL_CARD.md",
            "metrics.json",
        ):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def train_vae(cfg: TrainVAEConfig) -> TrainVAEResult:
    """Train (or resume) a small AutoencoderKL; see the module docstring."""
    import torch
    from tqdm import tqdm

    from aligngemini.generators.base import resolve_device

    if cfg.size % 8 or cfg.size < 16:
        raise TrainVAEError(f"--size {cfg.size}: use a multiple of 8, at least 16")
    if cfg.steps < 1 or cfg.batch < 1:
        raise TrainVAEError("--steps and --batch must be positive")
    paths = list_training_images(
        cfg.images, cfg.split
    )  # before touching --out, so a bad input leaves nothing behind
    encoder_folder = cfg.encoder_folder()
    if cfg.distill and encoder_folder is None:
        raise TrainVAEError(
            "--distill fits the encoder folder's own decoder: give --encoder taesd:<folder> too"
        )
    encoder = own_decoder = None
    # both halves now, so that a folder without its decoder fails before training
    if encoder_folder is not None:
        from aligngemini.generators.base import GeneratorSpecError
        from aligngemini.generators.taesd import latent_channels_of, load_tiny_autoencoder

        try:
            encoder, own_decoder = load_tiny_autoencoder(encoder_folder)
        except GeneratorSpecError as exc:
            raise TrainVAEError(f"--encoder {cfg.encoder!r}: {exc}") from exc
        encoder.requires_grad_(False)
        own_decoder.requires_grad_(False)
        cfg = replace(cfg, latent_channels=latent_channels_of(encoder))
    init_folder = _init_folder(cfg, encoder_folder)
    out = _prepare_out(cfg)
    device = resolve_device(cfg.device)
    if device.type == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop shapes

    if cfg.max_images:
        paths = paths[: cfg.max_images]
    train_paths, val_paths = split_by_image(paths, cfg.val_fraction, cfg.seed)
    pool_np, skipped = build_crop_pool(
        train_paths, cfg.size, cfg.crops_per_image, cfg.max_pool, cfg.seed, desc="train crops"
    )
    val_np, val_skipped = build_crop_pool(
        val_paths, cfg.size, 4, cfg.max_val_crops, cfg.seed + 1, desc="held-out crops"
    )
    if len(pool_np) == 0 or len(val_np) == 0:
        raise TrainVAEError(
            f"{cfg.images}: no usable {cfg.size}px crops (images unreadable or smaller than the crop); "
            "lower --size or add larger photos"
        )
    data_digest = hashlib.sha256("\n".join(str(p) for p in paths).encode()).hexdigest()[:16]
    pool = torch.from_numpy(pool_np).permute(0, 3, 1, 2).contiguous()  # uint8 [N, 3, S, S]
    val = torch.from_numpy(val_np).permute(0, 3, 1, 2).contiguous()

    torch.manual_seed(cfg.seed)
    if encoder is None:
        model = small_vae(cfg).to(device).train()
        roundtrip = _vae_roundtrip(model)
    else:
        encoder = encoder.to(device)
        model = (
            kl_decoder(cfg.latent_channels, cfg.block_out_channels, cfg.layers_per_block).to(device).train()
        )
        roundtrip = lambda x: model(encoder(x))  # noqa: E731
    if init_folder is not None:
        _load_init(init_folder, model, decoder_only=encoder is not None)
    critic = patch_discriminator().to(device).train() if cfg.adversarial_weight else None
    teacher = own_decoder.to(device).eval() if cfg.distill else None
    # what a checkpoint holds: the model, and the critic beside it when there is one
    trained = model if critic is None else torch.nn.ModuleDict({"model": model, "critic": critic})
    last = (model.conv_out if encoder is not None else model.decoder.conv_out).weight
    # one optimiser: a step moves only the parameters that have a gradient, the model's or the critic's
    opt = torch.optim.AdamW(trained.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    ckpt = out / "checkpoint"
    start, elapsed, history = 0, 0.0, []
    if cfg.resume and (ckpt / CHECKPOINT_STATE).is_file():
        state = json.loads((ckpt / CHECKPOINT_STATE).read_text())
        if state.get("arch") != cfg.arch():
            raise TrainVAEError(
                f"{ckpt}: checkpoint architecture {state.get('arch')} differs from {cfg.arch()}"
            )
        if state.get("data_digest") != data_digest:
            warnings.warn(
                f"{ckpt}: the image list changed since this checkpoint; resuming anyway", stacklevel=2
            )
        state = _load_checkpoint(ckpt, trained, opt)
        start, elapsed, history = state["step"], state["elapsed"], state.get("history", [])

    # bf16 autocast on GPU (the loss stays in float32); plain float32 on the CPU
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter() - elapsed
    running: list[float] = []
    total = cfg.steps  # may shrink to fit max_seconds
    bar = tqdm(total=total, initial=start, desc="train-vae", unit="step", file=sys.stderr)
    t_mark = time.perf_counter()
    step = start
    while step < total:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(len(pool), (cfg.batch,), generator=gen)
        x = pool[idx]
        flip = torch.rand(cfg.batch, generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        x = x.to(device).float().div_(255)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg, total)
        torch.manual_seed(cfg.seed + step)  # the posterior sample
        with autocast:
            if encoder is None:
                posterior = model.encode(x * 2 - 1).latent_dist
                rec = (model.decode(posterior.sample()).sample.float() + 1) / 2
                kl = posterior.kl().float().mean()
            else:
                with torch.no_grad():
                    z = encoder(x)
                rec = (model(z).float() + 1) / 2
                kl = torch.zeros((), device=device)
        target = x
        if teacher is not None:
            with torch.no_grad(), autocast:
                target = teacher(z).float().clamp(0, 1)
        l1 = (rec - target).abs().mean()
        gl = _grad_l1(rec, target)
        loss = l1 + cfg.grad_weight * gl + cfg.kl_weight * kl
        if cfg.spectral_weight:
            loss = loss + cfg.spectral_weight * band_energy_l1(rec, target)
        if critic is not None:
            critic.requires_grad_(False)
            with autocast:
                fool = -critic(rec * 2 - 1).float().mean()  # hinge loss, the model's side
            ramp = min(1.0, (step + 1) / max(1, cfg.warmup))  # the critic learns before it is heard in full
            loss = loss + cfg.adversarial_weight * ramp * adaptive_weight(loss, fool, last) * fool
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if critic is not None:
            critic.requires_grad_(True)
            with autocast:
                real, fake = critic(x * 2 - 1).float(), critic(rec.detach() * 2 - 1).float()
            critic_loss = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
            opt.zero_grad(set_to_none=True)
            critic_loss.backward()
            torch.nn.utils.clip_grad_norm_(critic.parameters(), 1.0)
            opt.step()
        running.append(float(loss.detach()))
        bar.update(1)
        step += 1
        if cfg.max_seconds and step == start + 10:
            t_mark = (
                time.perf_counter()
            )  # steps 10-30 time the loop; the first ones pay for warm-up/autotuning
        if cfg.max_seconds and step == start + 30 and step < total:
            per_step = (time.perf_counter() - t_mark) / 20
            fits = step + int((cfg.max_seconds - (time.perf_counter() - t0)) / per_step)
            if fits < total:
                total = max(step, fits)
                bar.total = total
                bar.write(
                    f"time budget {cfg.max_seconds:.0f} s at {per_step * 1000:.0f} ms/step: {total} steps"
                )
        if step % 10 == 0 or step == total:
            bar.set_postfix(loss=f"{np.mean(running[-50:]):.4f}", l1=f"{float(l1.detach()):.4f}")
        if step % cfg.eval_every == 0 or step == total:
            v, detail = _evaluate(model, roundtrip, val, device, cfg.batch)
            loss_avg = float(np.mean(running[-50:]))
            history.append({"step": step, "loss": loss_avg, "val_psnr": v, "val_detail": detail,
                            "seconds": time.perf_counter() - t0})  # fmt: skip
            bar.write(
                f"step {step}: loss {loss_avg:.4f}, held-out PSNR {v:.2f} dB, detail ratio {detail:.3f}"
            )
        if step % cfg.save_every == 0 and step < total:
            state = {"step": step, "elapsed": time.perf_counter() - t0, "arch": cfg.arch(),
                     "data_digest": data_digest, "history": history}  # fmt: skip
            _save_checkpoint(ckpt, trained, opt, state)
    bar.close()
    seconds = time.perf_counter() - t0
    steps_done = max(start, total)
    if history and "val_detail" in history[-1]:
        val_psnr, val_detail = history[-1]["val_psnr"], history[-1]["val_detail"]
    else:  # resumed at its last step from a checkpoint written before the detail ratio was recorded
        val_psnr, val_detail = _evaluate(model, roundtrip, val, device, cfg.batch)
    bicubic = _bicubic_psnr(val)

    model = model.float().eval()
    if encoder_folder is None:
        model.save_pretrained(out, safe_serialization=True)
    else:
        save_latent_decoder(out, model, cfg.arch(), encoder_folder)
    _save_checkpoint(
        ckpt,
        trained,
        opt,
        {
            "step": steps_done,
            "elapsed": seconds,
            "arch": cfg.arch(),
            "data_digest": data_digest,
            "history": history,
        },
    )
    result = TrainVAEResult(
        out=out,
        steps=steps_done,
        seconds=seconds,
        val_psnr=val_psnr,
        val_detail=val_detail,
        bicubic_psnr=bicubic,
        n_train_images=len(train_paths) - skipped,
        n_val_images=len(val_paths) - val_skipped,
        history=history,
    )
    if own_decoder is not None:  # the reference a decoder of our own is judged against: the encoder's own
        own = own_decoder.to(device)
        own_psnr, own_detail = _evaluate(own, lambda x: own(encoder(x)) * 2 - 1, val, device, cfg.batch)
    metrics = {
        "steps": steps_done,
        "seconds": round(seconds, 1),
        "device": str(device),
        "params": n_params,
        "val_psnr_db": round(val_psnr, 3),
        "val_detail_ratio": round(val_detail, 4),
        "bicubic_x8_psnr_db": round(bicubic, 3),
        **(
            {
                "encoder_own_decoder_psnr_db": round(own_psnr, 3),
                "encoder_own_decoder_detail_ratio": round(own_detail, 4),
            }
            if own_decoder is not None
            else {}
        ),
        "train_images": result.n_train_images,
        "val_images": result.n_val_images,
        "train_crops": len(pool),
        "val_crops": len(val),
        "skipped_images": skipped + val_skipped,
        "data": str(cfg.images),
        "data_digest": data_digest,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "MODEL_CARD.md").write_text(_model_card(cfg, metrics))
    return result


def _model_card(cfg: TrainVAEConfig, m: dict[str, Any]) -> str:
    if cfg.encoder:
        title = "SD-family decoder on a frozen TAESD-family encoder"
        what = (
            f"the frozen encoder of `{cfg.encoder}` (its weights copied here as `{ENCODER_FILE}`, its licence as "
            f"`{ENCODER_LICENSE}`) and a decoder trained here on its latents. Load it with "
            '`build_generator("taesd-kl:<this folder>")`'
        )
        arch = (
            f"encoder: `{cfg.encoder}`, not trained; decoder: diffusers' VAE `Decoder` (SD-VAE family), "
            f"block_out_channels {list(cfg.block_out_channels)}, layers_per_block {cfg.layers_per_block}, reading "
            f"{cfg.latent_channels} latent channels, 8x up-sampling, {m['params']:,} trained parameters"
        )
        loss = f"L1 + {cfg.grad_weight} x gradient-L1{_extra_terms(cfg)} (no KL: the latent is the encoder's)"
        own = f"; the encoder's own decoder: {m['encoder_own_decoder_psnr_db']:.2f} dB"
        own_detail = f"; the encoder's own decoder: {m['encoder_own_decoder_detail_ratio']:.3f}"
        licence = (
            "The encoder's weights keep their own licence (`ENCODER_LICENSE`); the decoder's follow the training "
            "images' licences; see the data source's own records."
        )
    else:
        title = "Small AutoencoderKL"
        what = 'this VAE. Load it with `build_generator("vae:<this folder>")` or ' + (
            "`diffusers.AutoencoderKL.from_pretrained(<this folder>)`"
        )
        arch = (
            f"SD-VAE family, block_out_channels {list(cfg.block_out_channels)}, layers_per_block "
            f"{cfg.layers_per_block}, {cfg.latent_channels} latent channels, 8x down-sampling, {m['params']:,} "
            "parameters"
        )
        loss = f"L1 + {cfg.grad_weight} x gradient-L1{_extra_terms(cfg)} + {cfg.kl_weight} x KL"
        own = own_detail = ""
        licence = (
            "Licence of the weights follows the training images' licences; see the data source's own records."
        )
    return f"""# {title} trained by `aligngemini generators train-vae`

A reconstruction generator for pure-pixel supervision: real photos and their round trips share their scene and
differ in decoder traces. Round trip: {what}. Not a generative model of images.

| | |
| --- | --- |
| architecture | {arch} |
| data | `{m["data"]}` (sha256 of the file list {m["data_digest"]}): {m["train_images"]} training images, \
{m["val_images"]} held-out images (split by image), {m["train_crops"]} / {m["val_crops"]} crops of {cfg.size} px, \
{m["skipped_images"]} images skipped (unreadable or smaller than a crop) |
| training | {m["steps"]} steps, batch {cfg.batch}, AdamW lr {cfg.lr} (warm-up {cfg.warmup}, cosine to 10%), \
loss {loss}, seed {cfg.seed}{_init_phrase(cfg)} |
| time | {m["seconds"]:.0f} s on {m["device"]} |
| held-out reconstruction | PSNR {m["val_psnr_db"]:.2f} dB (latent mean, 8-bit); bicubic x8 down-and-up of the same \
crops: {m["bicubic_x8_psnr_db"]:.2f} dB{own} |
| held-out detail ratio | {m["val_detail_ratio"]:.3f} (high-pass energy of the reconstructions over the photos'; 1 keeps \
their fine detail, below 1 is softer){own_detail} |

{_quality_note(m, cfg.spectral_weight > 0 or cfg.adversarial_weight > 0)}
{licence}
Use it as one generator among several, never as the only one.
"""


def _extra_terms(cfg: TrainVAEConfig) -> str:
    """The optional terms of the loss, as the card names them."""
    terms = f" + {cfg.spectral_weight} x ring-energy L1" if cfg.spectral_weight else ""
    if cfg.adversarial_weight:
        terms += f" + {cfg.adversarial_weight} x adaptively weighted PatchGAN hinge loss"
    if cfg.distill:
        terms += f"; the reconstruction terms against `{cfg.encoder}`'s own decoder's output (distillation), not the photos"
    return terms


def _init_phrase(cfg: TrainVAEConfig) -> str:
    """Where the weights started: a fine-tune's card points at the run it started from (whose card says how
    that one was trained)."""
    return f"; started from the weights of `{cfg.init}` (see its own MODEL_CARD.md)" if cfg.init else ""


def _quality_note(m: dict[str, Any], texture: bool = False) -> str:
    """A VAE with 8x down-sampling should beat bicubic interpolation from the 1/8 image; one that does not
    changes colour and detail, not only decoder traces, and makes impure pixel pairs. One that keeps little of the
    photos' fine detail makes pairs whose fakes are simply softer. ``texture``: the loss had a term that draws
    texture (spectral or adversarial)."""
    if m["val_psnr_db"] < m["bicubic_x8_psnr_db"]:
        note = (
            f"**Undertrained**: its held-out PSNR ({m['val_psnr_db']:.2f} dB) is below bicubic x8 "
            f"({m['bicubic_x8_psnr_db']:.2f} dB), so its reconstructions differ from the originals in colour and "
            "detail, not only in decoder traces. Train longer (`--resume --steps N`) before building pure-pixel "
            "pairs with it."
            + (
                " With a texture term part of the gap is texture drawn where the photo had other texture; "
                "`benchmarks/decoder_detail.py` measures how much fine detail the reconstructions keep."
                if texture
                else ""
            )
            + "\n"
        )
    else:
        note = "Held-out PSNR is above the bicubic x8 floor: reconstructions keep colour and structure.\n"
    if m["val_detail_ratio"] < 0.5:
        note += (
            f"\n**Soft**: its reconstructions keep {m['val_detail_ratio']:.0%} of the photos' fine-detail energy, "
            "where a real latent-diffusion decoder keeps about all of it; pure-pixel pairs built with it teach an "
            "expert that soft means generated. Fine-tune it (`--init` with `--distill` or `--adversarial-weight`) at the "
            "crop size the pairs use, for thousands of steps.\n"
        )
    return note
