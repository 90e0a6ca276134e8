"""Where in an image the pixel expert's evidence is: its AUC per leave-out fold when it scores different
tiles of the same images.

Every image of a ``benchmarks/wild_eval.py`` run is cut into non-overlapping tiles of the expert's crop size
(at most 12 x 12, spread evenly), each tile is scored once by the pixel run that never saw the image's fold
(the run ``wild_eval`` chose for it), and fixed selection rules pick the tiles whose mean logit is the image's
score: the run's own inference crops, every tile, the border or interior ones, the most or least textured
half, and so on. Each rule's AUC per fold comes with a 95% bootstrap interval (images resampled within each
class). The rules are fixed here in advance; picking the best of them on the same folds would be fitting.

    python benchmarks/wild_eval.py --pixel-run runs/npr-a-1800 --pixel-run runs/npr-b-1800 --out runs/we
    python benchmarks/pixel_tiles.py --wild-eval runs/we --pixel-run runs/npr-a-1800 \\
        --pixel-run runs/npr-b-1800 --out benchmarks/results/pixel_tiles
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import describe_run, record_header, record_path, write_record  # noqa: E402

MAX_TILES_PER_SIDE = 12


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wild-eval", type=Path, required=True,
                   help="OUT of a wild_eval run: OUT.json names the run per fold, OUT_scores.csv the images")  # fmt: skip
    p.add_argument("--pixel-run", action="append", required=True, metavar="DIR",
                   help="the training runs wild_eval used (matched to its choices by folder name)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="write OUT.json and OUT.md")
    p.add_argument("--machine", default="2-core CPU dev box")
    return p.parse_args(argv)


def resolve(path: str) -> Path:
    from aligngemini.paths import home_dir

    if path.startswith("data:"):
        return home_dir() / "data" / path[len("data:") :]
    return Path(path) if Path(path).is_absolute() else ROOT / path


def tile_corners(h: int, w: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners of non-overlapping ``size`` tiles on multiples of ``size``, at most 12 per side."""
    ys = np.unique(np.linspace(0, h // size - 1, min(h // size, MAX_TILES_PER_SIDE)).round().astype(int))
    xs = np.unique(np.linspace(0, w // size - 1, min(w // size, MAX_TILES_PER_SIDE)).round().astype(int))
    return [(int(y) * size, int(x) * size) for y in ys for x in xs]


def score_tiles(rows: list[dict[str, str]], runs: dict[str, Path]) -> list[dict[str, Any]]:
    """Per image: the run's own inference crops' logits, every tile's corner, logit and texture."""
    import torch
    from tqdm import tqdm

    from aligngemini.branches import build_branch
    from aligngemini.branches.pixel.crops import as_array, inference_boxes, pad_to_min
    from aligngemini.decode import load_image
    from aligngemini.train.run_output import read_run

    branches = {}
    for name, run in runs.items():
        trained = read_run(run)
        branches[name] = build_branch(
            "pixel", trained.section, trained.branch_dir, device=torch.device("cpu"), dtype=torch.float32
        )
    out = []
    for row in tqdm(rows, desc="tiles", unit="image"):
        branch = branches[row["run"]]
        cfg, size = branch.crop, branch.crop.size
        arr = pad_to_min(as_array(load_image(resolve(row["path"]), max_pixels=200_000_000).image), size)
        h, w = arr.shape[:2]
        own = inference_boxes(h, w, cfg)
        tiles = tile_corners(h, w, size)
        crops = np.stack([arr[t : t + size, x : x + size] for t, x in own + tiles])
        logits = branch.logits(torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2))))
        grey = crops[len(own) :].astype(np.float32).mean(-1)
        out.append({
            "fold": row["fold"], "label": int(row["label"] == "fake"), "h": h, "w": w, "size": size,
            "own": logits[: len(own)].reshape(-1).tolist(), "tiles": tiles, "logits": logits[len(own) :].reshape(-1).tolist(),
            "texture": np.abs(np.diff(grey, axis=2)).mean(axis=(1, 2)).tolist(),
        })  # fmt: skip
    return out


def _border(im: dict[str, Any]) -> np.ndarray:
    t = np.asarray(im["tiles"])
    last_y, last_x = t[:, 0].max(), t[:, 1].max()
    return (t[:, 0] == 0) | (t[:, 1] == 0) | (t[:, 0] == last_y) | (t[:, 1] == last_x)


def _mean_where(im: dict[str, Any], mask: np.ndarray) -> float:
    lg = np.asarray(im["logits"])
    return float(lg[mask].mean() if mask.any() else lg.mean())


def _texture_half(im: dict[str, Any], most: bool) -> float:
    tex, lg = np.asarray(im["texture"]), np.asarray(im["logits"])
    order = np.argsort(-tex if most else tex)
    return float(lg[order[: max(1, len(lg) // 2)]].mean())


def _centre(im: dict[str, Any]) -> float:
    t = np.asarray(im["tiles"], dtype=float) + im["size"] / 2
    d = ((t - [im["h"] / 2, im["w"] / 2]) ** 2).sum(axis=1)
    return float(np.asarray(im["logits"])[int(np.argmin(d))])


RULES: dict[str, Callable[[dict[str, Any]], float]] = {
    "the run's inference crops (mean P(fake))": lambda im: float(np.mean(1 / (1 + np.exp(-np.asarray(im["own"]))))),
    "every tile": lambda im: float(np.mean(im["logits"])),
    "median tile": lambda im: float(np.median(im["logits"])),
    "border tiles": lambda im: _mean_where(im, _border(im)),
    "interior tiles": lambda im: _mean_where(im, ~_border(im)),
    "most textured half": lambda im: _texture_half(im, True),
    "least textured half": lambda im: _texture_half(im, False),
    "centre tile": _centre,
}  # fmt: skip


def measure(images: list[dict[str, Any]]) -> dict[str, Any]:
    from aligngemini.eval.metrics import bootstrap_interval, roc_auc

    folds = sorted({im["fold"] for im in images})
    out: dict[str, Any] = {}
    for rule, fn in RULES.items():
        per = {}
        for f in folds:
            ims = [im for im in images if im["fold"] == f]
            y = np.array([im["label"] for im in ims])
            s = np.array([fn(im) for im in ims])
            per[f] = {
                "auc": roc_auc(y, s),
                "interval": bootstrap_interval(y, lambda i, y=y, s=s: roc_auc(y[i], s[i])),
            }
        out[rule] = {"folds": per, "mean_auc": float(np.mean([v["auc"] for v in per.values()]))}  # fmt: skip
    return out


def render_md(record: dict[str, Any]) -> str:
    res = record["result"]
    folds = sorted(next(iter(res.values()))["folds"])
    lines = [
        "# Which tiles of an image carry the pixel expert's evidence",
        "",
        describe_run(record, f"{record['seconds']:.0f} s") + f". Runs per fold: {record['runs']}.",
        "",
        "Pixel AUC per leave-out fold when each image's score is the mean logit of the tiles a fixed rule picks",
        "(tiles: non-overlapping crops of the expert's size, at most 12 per side), with 95% bootstrap intervals.",
        "",
        "| tiles | " + " | ".join(folds) + " | mean |",
        "| --- | " + " | ".join("---" for _ in folds) + " | --- |",
    ]
    for rule, r in res.items():
        cells = [f"{r['folds'][f]['auc']:.3f} [{r['folds'][f]['interval'][0]:.2f}, {r['folds'][f]['interval'][1]:.2f}]"
                 for f in folds]  # fmt: skip
        lines.append(f"| {rule} | " + " | ".join(cells) + f" | {r['mean_auc']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0, header = time.time(), record_header("pixel_tiles", argv, args.machine)
    chosen = json.loads(record_path(args.wild_eval, ".json").read_text())["pixel_runs"]
    by_name = {Path(r).name: Path(r) for r in args.pixel_run}
    missing = sorted(set(chosen.values()) - set(by_name))
    if missing:
        sys.exit(
            f"pixel_tiles: {args.wild_eval}.json scored folds with {missing}; pass them with --pixel-run"
        )
    with open(args.wild_eval.parent / f"{args.wild_eval.name}_scores.csv", newline="") as fh:
        rows = [r | {"run": chosen[r["fold"]]} for r in csv.DictReader(fh) if r["fold"] in chosen]
    images = score_tiles(rows, {name: by_name[name] for name in set(chosen.values())})
    record = {
        **header,
        "seconds": 0.0,
        "runs": chosen,
        "result": measure(images),
    }
    record["seconds"] = time.time() - t0
    write_record(args.out, record, render_md(record))
    print(render_md(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
