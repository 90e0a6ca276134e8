"""Does a pixel expert read an image's resampling history? Photos scored as they are and shrunk.

A pure-pixel expert should judge the generator's trace, not how an image was resized on its way to the web: a
photo shrunk 2x by a web page is still a photo. This probe scores each photo once as it is and once per shrink
(2x by box, bicubic and Lanczos, and 0.75x by Lanczos: what image tools and web pages do), then reports per
expert and shrink

- the mean change of the expert's log-odds (shrunk minus as-is; positive: the shrink makes photos look fake),
- the *history AUC*: how well the score tells the shrunk copies from the originals (0.5: blind to the shrink;
  above 0.5: a shrunk photo looks generated to it).

An expert whose pairs end every fake with a shrink (the ``esrgan:...:shrink2`` generator halves its output) and
no real with one can learn "recently shrunk = fake"; photos that web pages shrank then score as fakes.

    python benchmarks/pixel_history.py --pixel-run runs/tx5-a-s1 --bundle starter \\
        --pixel-opt crop.phases=4 --pixel-opt precision=bf16 --out benchmarks/results/pixel_history

``--distance SPEC`` also probes a training-free score, ``benchmarks/recon_distance.py``'s ``hp_ratio`` through that
autoencoder (how closely a round trip reproduces the image's fine detail), in place of an expert's log-odds.

By default the photos are the wildmix set's camera originals (24 cameras, never shrunk); ``--images`` takes any
folder of photos instead. Pick photos the experts never trained on.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import REPO, describe_run, portable, record_header, write_record  # noqa: E402

DEFAULT_IMAGES = REPO.parent / "shared" / "datasets" / "wildmix" / "mei-camera-originals" / "real"
SHRINKS = (("x0.5 box", 0.5, "box"), ("x0.5 bicubic", 0.5, "bicubic"), ("x0.5 lanczos", 0.5, "lanczos"),
           ("x0.75 lanczos", 0.75, "lanczos"))  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pixel-run", action="append", default=[], type=Path, metavar="DIR",
                   help="an 'aligngemini train' output of the pixel task (repeatable)")  # fmt: skip
    p.add_argument("--bundle", action="append", default=[], metavar="BUNDLE",
                   help="a bundle (folder, archive or registered name, e.g. starter): its pixel expert")  # fmt: skip
    p.add_argument("--distance", action="append", default=[], metavar="SPEC",
                   help="a training-free score: recon_distance.py's hp_ratio through this autoencoder, e.g. "
                   "taesd:../shared/weights/taef2 (repeatable)")  # fmt: skip
    p.add_argument("--pixel-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of each expert's pixel section, e.g. crop.phases=4")  # fmt: skip
    p.add_argument(
        "--images", type=Path, default=DEFAULT_IMAGES, help="a folder of photos (default: %(default)s)"
    )
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    p.add_argument("--machine", default="2-core CPU dev box")
    args = p.parse_args(argv)
    if not args.pixel_run and not args.bundle and not args.distance:
        p.error("name at least one expert: --pixel-run DIR, --bundle BUNDLE or --distance SPEC")
    return args


def experts(args: argparse.Namespace) -> dict[str, tuple[dict[str, Any], Path]]:
    """name -> (pixel section, folder its files are relative to)."""
    from aligngemini.bundle import load_bundle
    from aligngemini.config import apply_overrides
    from aligngemini.train.run_output import RunOutputError, read_run

    out: dict[str, tuple[dict[str, Any], Path]] = {}
    for run in args.pixel_run:
        try:
            trained = read_run(run)
        except RunOutputError as exc:
            raise SystemExit(str(exc)) from exc
        out[f"run {run.name}"] = (apply_overrides(trained.section, args.pixel_opt), trained.branch_dir)
    for spec in args.bundle:
        bundle = load_bundle(spec)
        section = bundle.config.get("branches", {}).get("pixel")
        if section is None:
            raise SystemExit(f"{spec}: the bundle has no pixel expert")
        out[f"bundle {bundle.name}"] = (apply_overrides(section, args.pixel_opt), bundle.dir)
    return out


def shrunk(image: Any, factor: float, method: str) -> Any:
    from aligngemini.data import transforms as T

    w, h = image.image.size
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return dataclasses.replace(image, image=T.resize(image.image, size=size, method=method))


def distance_scorer(spec: str) -> Callable[[list[Any]], np.ndarray]:
    """recon_distance.py's hp_ratio (higher: closer to what the autoencoder makes) of each image's two crops."""
    from recon_distance import distances, middle_row_crops

    from aligngemini.generators.base import build_generator, to_images, to_tensor

    generator = build_generator(spec, device="cpu")

    def score(batch: list[Any]) -> np.ndarray:
        out = []
        for im in batch:
            crops = middle_row_crops(im.image, 256)
            out.append(distances(crops, to_tensor(generator.reconstruct(to_images(crops))))["hp_ratio"])
        return np.asarray(out)

    return score


def history_auc(native: np.ndarray, changed: np.ndarray) -> float:
    """AUC of the score telling the changed copies (positives) from the originals."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(len(native)), np.ones(len(changed))]
    return float(roc_auc_score(labels, np.r_[native, changed]))


def load_photos(folder: Path) -> list[Any]:
    """The readable photos of ``folder``, any size (an unreadable one is said and skipped); at least two."""
    from aligngemini.decode import IMAGE_SUFFIXES, ImageLoadError, load_image

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    images = []
    for path in paths:
        try:
            images.append(load_image(path, max_pixels=200_000_000))
        except ImageLoadError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
    if len(images) < 2:
        raise SystemExit(f"{folder}: found {len(images)} readable photos; the probe needs at least 2")
    return images


def history(score: Callable[[list[Any]], np.ndarray], images: list[Any]) -> dict[str, Any]:
    """One expert's ``score`` (log-odds per image) of the photos as they are and after each shrink of SHRINKS."""
    native = score(images)
    rows = {}
    for label, factor, method in SHRINKS:
        changed = score([shrunk(im, factor, method) for im in images])
        rows[label] = {"mean_logit_change": float(np.mean(changed - native)),
                       "history_auc": history_auc(native, changed),
                       "share_more_fake": float(np.mean(changed > native))}  # fmt: skip
    return {"mean_logit_as_is": float(np.mean(native)), "shrinks": rows}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from aligngemini.branches import build_branch
    from aligngemini.fusion import logit

    images = load_photos(args.images)
    scorers: dict[str, Callable[[list[Any]], np.ndarray]] = {}
    for name, (section, folder) in experts(args).items():
        branch = build_branch("pixel", section, folder, device=torch.device("cpu"), dtype=torch.float32)
        scorers[name] = lambda batch, branch=branch: logit(
            np.asarray(branch.score([branch.prepare(im) for im in batch]), dtype=np.float64)
        )
    for spec in args.distance:
        scorers[f"hp_ratio through {spec}"] = distance_scorer(spec)
    results: dict[str, Any] = {}
    for name, score in scorers.items():
        results[name] = history(score, images)
        print(
            f"{name}: "
            + ", ".join(f"{k} {v['history_auc']:.3f}" for k, v in results[name]["shrinks"].items()),
            file=sys.stderr,
        )
    return {"images": portable(str(args.images)), "n_images": len(images), "experts": results}


def render_md(record: dict[str, Any]) -> str:
    lines = [
        "# Does the pixel expert read a photo's resampling history?",
        "",
        f"{describe_run(record)}.",
        "",
        f"{record['n_images']} photos from `{record['images']}`, each scored as it is and shrunk. History AUC: how "
        "well the expert's score tells the shrunk copies from the originals (0.5: blind to the shrink; above: a "
        "shrunk photo looks generated to it). In brackets the mean change of its score, shrunk minus as is "
        "(log-odds for an expert; for hp_ratio its negated log distance).",
        "",
        "| expert | mean score as is | " + " | ".join(label for label, _, _ in SHRINKS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in SHRINKS) + " |",
    ]
    for name, res in record["experts"].items():
        cells = [f"{s['history_auc']:.3f} ({s['mean_logit_change']:+.2f})" for s in res["shrinks"].values()]
        lines.append(f"| {name} | {res['mean_logit_as_is']:+.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    record = record_header("pixel_history", argv, args.machine)
    record.update(measure(args))
    md = render_md(record)
    print(md)
    if args.out:
        write_record(args.out, record, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
