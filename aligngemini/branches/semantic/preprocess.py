"""How a whole image becomes a contrastive tower's input: resized to the tower's square (CLIP's own centre
crop or the square at either end of the long side, the whole scene squashed, or fitted with mean-colour borders),
scaled to 0..1 and normalised."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("crop", "squash", "pad", "crop-start", "crop-end")
# Where each crop mode takes its square along the long side: 0 the left (top) end, 1 the right (bottom) end.
_CROP_AT = {"crop": 0.5, "crop-start": 0.0, "crop-end": 1.0}


def resize_bicubic(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Pillow's antialiased bicubic resize of an RGB image to ``size`` (width, height).

    Where the image shrinks in both directions and its height by no larger a factor than its width (a landscape
    or square photo to a square view), torch's uint8 kernel computes it (0.6 ms against Pillow's 5.2 for a
    1024x768 photo to 192 px), equal to Pillow's within two levels on a few tenths of a percent of the values
    (``benchmarks/resize_parity.py``).
    Everything else stays with Pillow: since Pillow 13 an image whose height shrinks much more than its width
    is resized height first, which torch does not follow, and a side that grows differs by up to 10 levels."""
    w, h = size
    shrinks = w <= image.width and h <= image.height
    if image.mode != "RGB" or not shrinks or image.height * w > image.width * h:
        return image.resize(size, Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]  # channels-last, as the fast kernel wants
    out = torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", antialias=True)
    return Image.fromarray(out[0].permute(1, 2, 0).numpy())


def resize_for_tower(
    image: Image.Image, size: int, mode: str = "crop", fill: Sequence[float] = CLIP_MEAN
) -> Image.Image:
    """``crop``: CLIP's own (shortest side to ``size``, bicubic, centre crop); ``crop-start`` / ``crop-end``: the
    same, the square at the left (top) or right (bottom) end instead, so that the three crops of a wide image
    cover all of it; ``squash``: the whole image to ``size`` x ``size``; ``pad``: the whole image fit inside,
    padded with ``fill`` (mean colour, 0..1)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} is unknown; use one of {RESIZE_MODES}")
    image = image if image.mode == "RGB" else image.convert("RGB")
    w, h = image.size
    if mode == "squash":
        return resize_bicubic(image, (size, size))
    if mode in _CROP_AT:
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        resized = resize_bicubic(image, (nw, nh))
        at = _CROP_AT[mode]
        left, top = int((nw - size) * at), int((nh - size) * at)
        return resized.crop((left, top, left + size, top + size))
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = resize_bicubic(image, (nw, nh))
    canvas = Image.new("RGB", (size, size), tuple(int(round(v * 255)) for v in fill))
    canvas.paste(resized, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def preprocess_image(
    image: Image.Image,
    size: int = 224,
    *,
    mode: str = "crop",
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """A [3, size, size] float32 tensor: resized (see ``resize_for_tower``), scaled to 0..1, normalised."""
    resized = resize_for_tower(image, size, mode, fill=mean)
    arr = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((arr - m) / s).contiguous()
