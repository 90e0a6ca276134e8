"""Curation rules for the starter corpus, as code: each rule returns a short reason string when an item
must go, so that every exclusion is reported and reproducible.

Three kinds of rule:

- image statistics (:func:`image_stats`, :func:`judge_stats`): animated files, small images, grey images,
  and synthetic graphics (logos, vector art, diagrams, masks) recognised by a small palette, large exactly
  flat areas, or the absence of sensor noise;
- names (:func:`judge_name`): masks, trimaps, logos, icons, screenshots and similar by path token;
- package metadata (:func:`judge_comfy_thumbnail`): ComfyUI template thumbnails are kept only when the
  template generates an image from text alone and the thumbnail is that output (not an edit input, not one
  half of a before/after pair, not a video, 3D, audio, anime or vector thumbnail, not from a workflow that
  loads an image). An animated thumbnail of
  a template that generates a video from text alone (:func:`judge_comfy_video`) gives one still: a frame
  a video model generated, with no input image behind it.

Measured limits, stated so nobody over-trusts them: the statistics separate flat or noise-free graphics
(desktop vector art, diagrams, logos) from photographs well, but not photographs *of* drawings or 3D renders
that were resized and JPEG-compressed (on realorai's real/ folder 24 such statistics with a logistic
regression reached only 0.67 cross-validated AUC). Those need a rule on where the image came from (see
``shared_sets.REALORAI_NONPHOTO_BLOCKS``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

MAX_FILE_BYTES = 40 * 1024 * 1024


@dataclass
class Dropped:
    """A file left out of a corpus, and why (written to curation.jsonl)."""

    source: str
    origin: str
    reason: str
    label: str | None = None


@dataclass(frozen=True)
class CurationRules:
    """Thresholds of the statistic rules. Defaults were set by looking at every registry image sorted by
    each statistic (2-core dev box, Nov 2026); see the module docstring for what they cannot see."""

    min_short_side: int = 256
    max_file_bytes: int = MAX_FILE_BYTES
    grey_chroma: float | None = 3.0  # mean max |channel - grey| below this (0-255 scale): a grey image
    min_colours: int | None = 256  # distinct 6-bit colours in a 256 px nearest-neighbour thumbnail
    max_flat_fraction: float | None = (
        0.5  # pixels whose right and lower neighbours are identical, native scale
    )
    render_noise: float | None = 0.5  # median |noise Laplacian| at or below this ...
    render_flat_blocks: float | None = (
        0.5  # ... and at least this fraction of 8x8 blocks with std < 1: a render
    )
    smooth_noise: float | None = 1.0  # median |Laplacian| of a 512 px reduction at or below this: vector art
    # Set a threshold to None to switch its rule off (e.g. for resized JPEG photo sets, where large flat
    # studio backgrounds trip the flatness rule).


@dataclass(frozen=True)
class ImageStats:
    width: int
    height: int
    format: str | None
    n_frames: int
    chroma: float
    n_colours: int
    flat_fraction: float
    noise_median: float
    flat_block_fraction: float
    smooth_median: float  # median |Laplacian| of the image reduced to 512 px (box filter)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("chroma", "flat_fraction", "noise_median", "flat_block_fraction", "smooth_median"):
            d[key] = round(float(d[key]), 4)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageStats:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def _centre_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    cw, ch = min(w, size), min(h, size)
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def image_stats(img: Image.Image, *, crop: int = 768) -> ImageStats:
    """Statistics of the first frame. Flatness and noise are measured on a native-resolution centre crop
    (resampling would erase exactly the noise we look for); colours and chroma on a small thumbnail."""
    n_frames = int(getattr(img, "n_frames", 1) or 1)
    fmt = img.format
    w, h = img.size
    if n_frames > 1:
        img.seek(0)
    rgb = img.convert("RGB")
    thumb = rgb.copy()
    thumb.thumbnail((256, 256), Image.Resampling.NEAREST)
    t = np.asarray(thumb, dtype=np.int16).reshape(-1, 3)
    chroma = float(np.abs(t - t.mean(axis=1, keepdims=True)).max(axis=1).mean())
    q = (t >> 2).astype(np.int32)
    n_colours = int(np.unique(q[:, 0] * 4096 + q[:, 1] * 64 + q[:, 2]).size)

    small = rgb.copy()
    small.thumbnail((512, 512), Image.Resampling.BOX)
    s = np.asarray(small, dtype=np.float32).mean(axis=-1)
    if s.shape[0] >= 3 and s.shape[1] >= 3:
        lap4 = s[:-2, 1:-1] + s[2:, 1:-1] + s[1:-1, :-2] + s[1:-1, 2:] - 4 * s[1:-1, 1:-1]
        smooth_median = float(np.median(np.abs(lap4)))
    else:
        smooth_median = 0.0

    a = np.asarray(_centre_crop(rgb, crop), dtype=np.int16)
    if a.shape[0] < 3 or a.shape[1] < 3:
        return ImageStats(w, h, fmt, n_frames, chroma, n_colours, 1.0, 0.0, 1.0, smooth_median)
    same_right = (a[:-1, 1:] == a[:-1, :-1]).all(axis=-1)
    same_down = (a[1:, :-1] == a[:-1, :-1]).all(axis=-1)
    flat_fraction = float((same_right & same_down).mean())
    g = a.astype(np.float32).mean(axis=-1)
    # Immerkaer's noise operator: a Laplacian difference that cancels smooth image structure.
    lap = (
        g[:-2, :-2] - 2 * g[:-2, 1:-1] + g[:-2, 2:]
        - 2 * g[1:-1, :-2] + 4 * g[1:-1, 1:-1] - 2 * g[1:-1, 2:]
        + g[2:, :-2] - 2 * g[2:, 1:-1] + g[2:, 2:]
    )  # fmt: skip
    noise_median = float(np.median(np.abs(lap)))
    hb, wb = g.shape[0] // 8 * 8, g.shape[1] // 8 * 8
    if hb and wb:
        blocks = g[:hb, :wb].reshape(hb // 8, 8, wb // 8, 8).std(axis=(1, 3))
        flat_blocks = float((blocks < 1.0).mean())
    else:
        flat_blocks = 1.0
    return ImageStats(
        w, h, fmt, n_frames, chroma, n_colours, flat_fraction, noise_median, flat_blocks, smooth_median
    )


def judge_stats(stats: ImageStats, rules: CurationRules = CurationRules()) -> str | None:
    """The first rule an image fails, or None when it may stay."""
    if stats.n_frames > 1:
        return "animated"
    if min(stats.width, stats.height) < rules.min_short_side:
        return f"small (<{rules.min_short_side} px short side)"
    if rules.grey_chroma is not None and stats.chroma < rules.grey_chroma:
        return "grey"
    if rules.min_colours is not None and stats.n_colours < rules.min_colours:
        return "few colours (graphic)"
    if rules.max_flat_fraction is not None and stats.flat_fraction >= rules.max_flat_fraction:
        return "flat areas (graphic)"
    if (
        rules.render_noise is not None
        and rules.render_flat_blocks is not None
        and stats.noise_median <= rules.render_noise
        and stats.flat_block_fraction >= rules.render_flat_blocks
    ):
        return "noise-free (render or vector art)"
    if rules.smooth_noise is not None and stats.smooth_median <= rules.smooth_noise:
        return "smooth at 512 px (vector art)"
    return None


# Path tokens that name non-photographic content: masks and ground truth, logos and icons, screenshots,
# calibration and test patterns. Matched against path components split on non-alphanumerics.
_NONPHOTO_TOKENS = {
    "mask", "masks", "trimap", "trimaps", "matte", "mattes", "gt", "groundtruth", "result", "output",
    "logo", "logos", "icon", "icons", "screenshot", "screenshots", "thumbnail", "thumbnails",
    "chessboard", "checkerboard", "pattern", "sudoku", "digits", "gradient", "templ", "tmpl",
    "diagram", "graph", "plot", "shape", "segmented", "char", "input", "abstract",
    # synthetic degradations and edits of a photo (ELA demos, simulated blur)
    "modified", "motion", "defocus", "blurred",
}  # fmt: skip
# Named because no rule here catches them: paintings shipped as test images, digital artwork whose
# dithering and texture pass every statistic, and synthetic test charts with added noise. A hand list,
# kept to what the rules above cannot see (file stems or folder names, lower case).
KNOWN_ARTWORKS = {
    "scream", "starry_night",  # paintings (darknet, opencv-doc)
    "analogpattern_by_peter_nerlich", "free_by_peter_nerlich", "bridge_by_sander_klootwijk",  # lomiri art
    "pic2", "pic4", "color",  # opencv-doc / scikit-image synthetic charts
    "volna",  # plasma-workspace-wallpapers: artwork shipped like the photos (one JPEG)
}  # fmt: skip


def _tokens(path: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", path).lower()) if t]


def judge_name(path: str) -> str | None:
    """A reason when the file's path says it is not a photograph."""
    p = PurePosixPath(path)
    names = [part.lower() for part in p.parent.parts] + [p.stem.lower()]
    if any(name in KNOWN_ARTWORKS for name in names):  # a file or a folder (plasma: Volna/contents/...)
        return "artwork or chart (named)"
    for token in _tokens(str(p.with_suffix(""))):
        if token in _NONPHOTO_TOKENS:
            return f"non-photo name ({token})"
    return None


# ---- ComfyUI workflow-template thumbnails -------------------------------------------------------------

# A template qualifies when it is text-to-image and has no tag that puts an input image, a non-image output
# or a non-photographic style into its thumbnails.
COMFY_REQUIRED_TAG = "Text to Image"
COMFY_EXCLUDED_TAGS = {
    # conditioned on an input image: its thumbnails are edits or show the input
    "Image Edit", "Inpainting", "Outpainting", "ControlNet", "Style Reference", "Character Reference",
    "Image Upscale", "Relight", "Remove Background", "Style Transfer", "Virtual Try-On", "Layer Decompose",
    "Depth", "Pose Map", "Character Replacement", "Layout",
    # not a still photographic image
    "Video", "Image to Video", "Text to Video", "3D", "Image to 3D", "Text to 3D", "Audio", "Vector",
    "Anime", "Brand Design",
}  # fmt: skip
# Templates absent from the index (older thumbnails): the name must say text-to-image and nothing else.
_COMFY_T2I_NAME = re.compile(r"(t2i|text_to_image)", re.IGNORECASE)
_COMFY_OTHER_NAME = re.compile(
    r"(i2v|t2v|v2v|flf|video|edit|inpaint|outpaint|i2i|3d|audio|model|controlnet|upscale|vector|anime)",
    re.IGNORECASE,
)


def split_comfy_thumbnail_name(filename: str) -> tuple[str, int] | None:
    """``api_foo_t2i-2.webp`` -> (``api_foo_t2i``, 2); None for names without the ``-N`` suffix."""
    m = re.fullmatch(r"(.+)-(\d+)\.[A-Za-z0-9]+", PurePosixPath(filename).name)
    return (m.group(1), int(m.group(2))) if m else None


def judge_comfy_thumbnail(template: str, index: int, meta: dict[str, Any] | None) -> str | None:
    """Keep only thumbnails that show the output of a pure text-to-image template.

    ``meta`` is the template's entry in ComfyUI's ``index.json`` (``comfyui-workflow-templates-json``):
    ``tags``, ``mediaType``, ``thumbnailVariant`` (``compareSlider``/``hoverDissolve`` = a before/after pair)
    and ``thumbnail`` (which file each ``-N`` thumbnail was made from: ``input/...`` or ``output/...``).
    """
    if meta is None:
        if not _COMFY_T2I_NAME.search(template) or _COMFY_OTHER_NAME.search(template.replace("t2i", "")):
            return "not text-to-image (name, no index entry)"
        return None if index == 1 else "extra thumbnail (no index entry)"
    if meta.get("mediaType", "image") != "image":
        return f"media type {meta.get('mediaType')}"
    return _judge_comfy_template(index, meta, COMFY_REQUIRED_TAG, COMFY_EXCLUDED_TAGS, "text-to-image")


def _judge_comfy_template(
    index: int, meta: dict[str, Any], required: str, excluded: set[str], kind: str
) -> str | None:
    """The template carries the ``required`` tag and none of ``excluded``, and thumbnail ``index`` shows its
    output (:func:`_judge_comfy_origin`)."""
    tags = set(meta.get("tags") or [])
    if required not in tags:
        return f"not {kind}"
    bad = sorted(tags & excluded)
    if bad:
        return f"tag {bad[0]}"
    return _judge_comfy_origin(index, meta)


def _judge_comfy_origin(index: int, meta: dict[str, Any]) -> str | None:
    """Whether thumbnail ``index`` shows the output of text alone: the workflow loads no image or video (the
    index's ``io.inputs``), and the thumbnail is not one half of a before/after pair, not made from an input
    file, not an extra thumbnail the index does not account for."""
    io = meta.get("io") if isinstance(meta.get("io"), dict) else {}
    loaded = sorted({str(i.get("mediaType")) for i in io.get("inputs") or [] if isinstance(i, dict)})
    visual = [kind for kind in loaded if kind in ("image", "video")]
    if visual:
        return f"loads an input {visual[0]}"
    if meta.get("thumbnailVariant") in ("compareSlider", "hoverDissolve"):
        return f"before/after pair ({meta['thumbnailVariant']})"
    thumbs = meta.get("thumbnail") or []
    if len(thumbs) >= index:
        if str(thumbs[index - 1]).startswith("input/"):
            return "edit input"
    elif index > 1:
        return "extra thumbnail"
    return None


# Text-to-video templates whose animated thumbnails give a generated still: the video comes from text alone.
COMFY_VIDEO_TAG = "Text to Video"
COMFY_VIDEO_EXCLUDED_TAGS = (COMFY_EXCLUDED_TAGS - {"Video", "Text to Video", "Audio"}) | {
    # conditioned on an input image or video: a frame may show (or continue) that input
    "Image to Video", "FLF2V", "Reference to Video", "Video Edit", "Video to Video", "Video Extend",
    "Video Upscale", "Lip Sync", "Motion Control", "Audio to Video",
}  # fmt: skip


def is_comfy_text_to_video(meta: dict[str, Any] | None) -> bool:
    """The index tags the template text-to-video (whether or not :func:`judge_comfy_video` then keeps it)."""
    return meta is not None and COMFY_VIDEO_TAG in set(meta.get("tags") or [])


def judge_comfy_video(index: int, meta: dict[str, Any] | None) -> str | None:
    """None when the thumbnail shows the output of a pure text-to-video template (the caller keeps one still
    of it), else the reason it does not. Only templates in the index qualify: names alone are too loose."""
    if meta is None:
        return "not text-to-video (no index entry)"
    return _judge_comfy_template(index, meta, COMFY_VIDEO_TAG, COMFY_VIDEO_EXCLUDED_TAGS, "text-to-video")


# Vendor names that ComfyUI lists among a template's "models" next to the model's own name.
_COMFY_VENDORS = {
    "stability",
    "openai",
    "google",
    "bfl",
    "black forest labs",
    "bytedance",
    "alibaba",
    "tencent",
}


def comfy_generator(meta: dict[str, Any] | None, template: str) -> str:
    """The most specific model name of a template: names contained in another name ('FLUX' in 'FLUX.2
    Dev') and vendor names are dropped, then the first remaining one in the index's order wins; falls
    back to the template name."""
    if not meta or not meta.get("models"):
        return template
    models = [str(m) for m in meta["models"]]
    vendors = _COMFY_VENDORS | {
        str(lg.get("provider", "")).lower() for lg in meta.get("logos") or [] if isinstance(lg, dict)
    }
    keep = [
        m
        for m in models
        if m.lower() not in vendors and not any(o != m and m.lower() in o.lower() for o in models)
    ]
    return (keep or models)[0]
