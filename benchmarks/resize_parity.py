"""How much the semantic tower's fast resize moves the detector's scores, on real images.

The CLIP tower's view is an antialiased bicubic reduction of the whole image. Pillow computes it in about
5 ms for a 1024x768 photo; for landscape and square images torch's uint8 kernel (``preprocess.resize_bicubic``)
does in about 0.6 ms, equal to Pillow's within a level or two on a few values (portraits stay with Pillow).
This script measures what that difference does where it
matters: every image of the starter corpus (``aligngemini data fetch-starter``) is scored by a bundle twice,
once with the views resized by Pillow (as before) and once as shipped, and the report gives the pixel
differences of the views, the change in each P(fake) and the verdicts that change.

    python benchmarks/resize_parity.py --out benchmarks/results/resize_parity
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import describe_run, portable, record_header, write_record  # noqa: E402

from aligngemini.branches.semantic import preprocess  # noqa: E402
from aligngemini.decode import load_image  # noqa: E402
from aligngemini.detector import Detector  # noqa: E402
from aligngemini.paths import data_dir  # noqa: E402

FAST_RESIZE = preprocess.resize_bicubic


def pillow_resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image.resize(size, Image.Resampling.BICUBIC)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="starter")
    p.add_argument("--corpus", type=Path, default=None, help="a corpus folder with manifest.jsonl "
                   "(default: the fetched starter corpus)")  # fmt: skip
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    p.add_argument("--machine", default="2-core CPU dev box")
    args = p.parse_args(argv)
    header = record_header("resize_parity", argv, args.machine)
    corpus = args.corpus or data_dir("starter")
    manifest = corpus / "manifest.jsonl"
    if not manifest.is_file():
        p.error(f"{manifest} not found: run `aligngemini data fetch-starter` first, or pass --corpus")
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()][: args.limit]
    det = Detector.load(args.bundle)
    sem = det.branches.get("semantic")
    if sem is None:
        p.error(f"bundle {args.bundle} has no semantic branch")
    size = int(sem.tower.image_size)
    paths = [str(corpus / r["path"]) for r in rows]
    images = [load_image(path) for path in paths]

    pixel_max, pixel_frac, t_pillow, t_fast = [], [], 0.0, 0.0
    for loaded in images:
        im = loaded.image
        t0 = time.perf_counter()
        a = np.asarray(pillow_resize(im, (size, size)), dtype=np.int16)
        t1 = time.perf_counter()
        b = np.asarray(FAST_RESIZE(im, (size, size)), dtype=np.int16)
        t_fast += time.perf_counter() - t1
        t_pillow += t1 - t0
        diff = np.abs(a - b)
        pixel_max.append(int(diff.max()))
        pixel_frac.append(float((diff > 0).mean()))

    def verdicts(resize: Any) -> list[Any]:
        preprocess.resize_bicubic = resize
        try:
            return det.predict(paths, batch_size=16)
        finally:
            preprocess.resize_bicubic = FAST_RESIZE

    before, after = verdicts(pillow_resize), verdicts(FAST_RESIZE)
    d_sem = np.array([abs(x.branches["semantic"].p_fake - y.branches["semantic"].p_fake)
                      for x, y in zip(before, after, strict=True)])  # fmt: skip
    d_fused = np.array([abs(x.p_fake - y.p_fake) for x, y in zip(before, after, strict=True)])
    changed = [
        {
            "path": portable(path),
            "before": x.verdict,
            "after": y.verdict,
            "p_fake": [round(x.p_fake, 4), round(y.p_fake, 4)],
        }
        for path, x, y in zip(paths, before, after, strict=True)
        if x.verdict != y.verdict or x.branches["semantic"].fake != y.branches["semantic"].fake
    ]
    largest = [
        {"path": portable(paths[i]), "size": list(images[i].image.size), "view_max_abs_difference": pixel_max[i],
         "semantic_p_fake": [round(before[i].branches["semantic"].p_fake, 4),
                             round(after[i].branches["semantic"].p_fake, 4)]}
        for i in np.argsort(-d_sem)[:5]
    ]  # fmt: skip
    # how far such a small difference can move these images anyway: the Pillow view with +-1 level on a random
    # 0.2% of its values (about what the two resizes differ by), five draws per image
    rng = np.random.default_rng(0)
    for entry, i in zip(largest, np.argsort(-d_sem)[:5], strict=True):
        view = np.asarray(pillow_resize(images[i].image, (size, size)), dtype=np.int16)
        draws = []
        for _ in range(5):
            noisy = view.copy()
            hit = rng.random(view.shape) < 0.002
            noisy[hit] += rng.choice(np.array([-1, 1], dtype=np.int16), int(hit.sum()))
            fixed = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
            preprocess.resize_bicubic = lambda image, size, fixed=fixed: fixed
            try:
                draws.append(float(sem.score([sem.prepare(images[i])])[0]))
            finally:
                preprocess.resize_bicubic = FAST_RESIZE
        entry["semantic_p_fake_under_noise"] = [round(min(draws), 4), round(max(draws), 4)]
    n = len(rows)
    record = {
        **header,
        "bundle": det.bundle_id,
        "images": n,
        "view_size": size,
        "resize_ms_per_image": {
            "pillow": round(t_pillow / n * 1000, 2),
            "torch": round(t_fast / n * 1000, 2),
        },
        "view_pixels": {
            "max_abs_difference": max(pixel_max),
            "images_with_a_difference_over_1": int(sum(m > 1 for m in pixel_max)),
            "mean_fraction_of_values_differing": round(float(np.mean(pixel_frac)), 5),
        },
        "semantic_p_fake_abs_change": _summary(d_sem),
        "fused_p_fake_abs_change": _summary(d_fused),
        "verdicts_changed": changed,
        "largest_semantic_changes": largest,
    }
    text = json.dumps(record, indent=1)
    print(text)
    if args.out:
        write_record(args.out, record, render(record))
    return 0


def _summary(d: np.ndarray) -> dict[str, float]:
    return {"max": float(f"{d.max():.3g}"), "p99": float(f"{np.percentile(d, 99):.3g}"),
            "mean": float(f"{d.mean():.3g}")}  # fmt: skip


def render(r: dict[str, Any]) -> str:
    px, sem, fused = r["view_pixels"], r["semantic_p_fake_abs_change"], r["fused_p_fake_abs_change"]
    lines = [
        "# The semantic view resized by torch instead of Pillow: what changes",
        "",
        describe_run(r) + ".",
        f"{r['images']} images of the starter corpus, each scored by `{r['bundle']}` with its {r['view_size']} px "
        "views resized by Pillow and as shipped (torch's uint8 kernel where the image is landscape or square).",
        "",
        "| | value |",
        "| --- | --- |",
        f"| resize, ms per image (Pillow / torch) | {r['resize_ms_per_image']['pillow']} / "
        f"{r['resize_ms_per_image']['torch']} |",
        f"| view values that differ, mean fraction | {px['mean_fraction_of_values_differing']:.3%} |",
        f"| largest difference, levels of 255 | {px['max_abs_difference']} |",
        f"| images with a difference over one level | {px['images_with_a_difference_over_1']} |",
        f"| semantic P(fake) change, max / p99 / mean | {sem['max']} / {sem['p99']} / {sem['mean']} |",
        f"| fused P(fake) change, max / p99 / mean | {fused['max']} / {fused['p99']} / {fused['mean']} |",
        f"| verdicts changed (fused, or the semantic branch's own) | {len(r['verdicts_changed'])} |",
    ]
    lines += [
        "",
        "The five largest changes of the semantic P(fake), and the range the same image's P(fake) takes when its "
        "Pillow view gets +-1 level on a random 0.2% of its values (five draws): the expert's own sensitivity to a "
        "difference of this size.",
        "",
        "| image | size | largest view difference | semantic P(fake), Pillow -> shipped | under +-1 noise |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in r["largest_semantic_changes"]:
        lines.append(
            f"| `{c['path']}` | {c['size'][0]}x{c['size'][1]} | {c['view_max_abs_difference']} | "
            f"{c['semantic_p_fake'][0]} -> {c['semantic_p_fake'][1]} | "
            f"{c['semantic_p_fake_under_noise'][0]}-{c['semantic_p_fake_under_noise'][1]} |"
        )
    if r["verdicts_changed"]:
        lines += ["", "Verdicts that changed:", ""]
    for c in r["verdicts_changed"]:
        lines.append(
            f"- `{c['path']}`: {c['before']} -> {c['after']} (P(fake) {c['p_fake'][0]} -> {c['p_fake'][1]})"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
