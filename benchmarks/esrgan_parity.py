"""Numerical parity of our PyTorch port of the upscalerjs ESRGAN models against TensorFlow.js itself.

For each package (esrgan-medium, esrgan-thick) and scale (x2, x3, x4, x8): the same low-resolution input (a
crop of scikit-image's astronaut, in [0, 1]) goes through TF.js (``@tensorflow/tfjs``, the pure-JS CPU backend,
the model's custom layers registered by the package's own code, value range from the package's own model
definition) and through ``ESRGANGenerator`` (our ``tfjs.py`` interpreter, float32, CPU). Reports the max and
mean absolute difference in [0, 1] units and the share of 8-bit output values that differ. Also checks that
our tiled up-scaling matches the whole-image run.

Needs node + npm and the npm registry once (fetches the two model packages and @tensorflow/tfjs into the
cache). Run: ``python benchmarks/esrgan_parity.py [--size 20x28] [--out benchmarks/results/esrgan_parity.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from aligngemini.generators.esrgan import PACKAGES, SCALES, ESRGANGenerator
from aligngemini.npm import fetch_npm
from aligngemini.paths import cache_dir

TFJS_VERSION = "4.11.0"  # the packages' peerDependency (~4.11.0)
HERE = Path(__file__).resolve().parent


def ensure_tfjs() -> Path:
    root = cache_dir("npm", f"tfjs-runtime-{TFJS_VERSION}")
    if not (root / "node_modules" / "@tensorflow" / "tfjs" / "package.json").is_file():
        (root / "package.json").write_text(json.dumps({"name": "tfjs-runtime", "private": True}))
        subprocess.run(
            [
                "npm",
                "install",
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                f"@tensorflow/tfjs@{TFJS_VERSION}",
            ],
            cwd=root,
            check=True,
        )
    return root


def photo_input(h: int, w: int) -> np.ndarray:
    from skimage import data

    img = data.astronaut()  # 512x512 RGB uint8, public domain (NASA)
    crop = img[180 : 180 + 4 * h : 4, 190 : 190 + 4 * w : 4]  # a face-and-suit crop with edges and texture
    return np.ascontiguousarray(crop.astype(np.float32) / 255.0)


def reference_facts(cmd: list[str]) -> dict | None:
    """Run a reference runtime's script; the JSON object its last output line holds, or None (its stderr
    printed) when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="20x28", help="low-resolution input HxW")
    parser.add_argument(
        "--variants",
        default=",".join(v for v, p in PACKAGES.items() if not p.is_ncnn),
        help="upscalerjs models",
    )
    parser.add_argument("--scales", default=",".join(map(str, SCALES)))
    parser.add_argument("--out", default=str(HERE / "results" / "esrgan_parity.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    if shutil.which("node") is None:
        print("node is not installed", file=sys.stderr)
        return 2
    h, w = (int(v) for v in args.size.split("x"))
    tfjs_dir = ensure_tfjs()
    x_nhwc = photo_input(h, w)
    x = torch.from_numpy(x_nhwc).permute(2, 0, 1)[None]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "in.bin").write_bytes(x_nhwc.tobytes())
        for variant in args.variants.split(","):
            pkg = PACKAGES[variant]
            pkg_dir = fetch_npm(pkg.source, integrity=pkg.integrity)
            for scale in (int(s) for s in args.scales.split(",")):
                out_bin = tmp / f"{variant}-{scale}.bin"
                facts = reference_facts(
                    ["node", str(HERE / "esrgan_parity.cjs"), str(tfjs_dir), str(pkg_dir), str(scale),
                     str(tmp / "in.bin"), str(h), str(w), str(out_bin)]
                )  # fmt: skip
                if facts is None:
                    return 1
                ref = np.frombuffer(out_bin.read_bytes(), dtype=np.float32).reshape(facts["shape"])
                ref = torch.from_numpy(ref.copy()).permute(0, 3, 1, 2)
                gen = ESRGANGenerator(variant, scale, device="cpu", tile=None)
                t0 = time.perf_counter()
                with torch.inference_mode():
                    ours = gen.model(x * gen.value_range) / gen.value_range
                ms = (time.perf_counter() - t0) * 1000
                diff = (ours - ref).abs()
                to8 = lambda t: t.clamp(0, 1).mul(255).round()  # noqa: E731
                row = {
                    "model": f"{variant} x{scale}",
                    "package": facts["package"],
                    "value_range_ours": gen.value_range,
                    "value_range_package": facts["inputRange"][1],
                    "output_shape": list(ref.shape),
                    "max_abs_diff": float(diff.max()),
                    "mean_abs_diff": float(diff.mean()),
                    "output_abs_max": float(ref.abs().max()),
                    "uint8_values_differing": float((to8(ours) != to8(ref)).float().mean()),
                    "tfjs_ms": facts["ms"],
                    "torch_ms": round(ms, 1),
                }
                rows.append(row)
                print(
                    f"{row['model']:10s} max|diff| {row['max_abs_diff']:.2e}  mean {row['mean_abs_diff']:.2e}  "
                    f"8-bit values differing {row['uint8_values_differing']:.4%}  range ours/package "
                    f"{row['value_range_ours']:g}/{row['value_range_package']:g}",
                    file=sys.stderr,
                )
    # tiling: a larger input in tiles of 16 (overlap 8) against one pass
    gen = ESRGANGenerator("medium", 2, device="cpu", tile=None)
    big = torch.from_numpy(photo_input(48, 64)).permute(2, 0, 1)[None]
    whole = gen.upscale(big)
    gen.tile, gen.tile_overlap = 16, 8
    tiled = gen.upscale(big)
    tiling = {"model": "medium x2", "input": [48, 64], "tile": 16, "overlap": 8,
              "max_abs_diff": float((whole - tiled).abs().max()),
              "uint8_values_differing": float(((whole * 255).round() != (tiled * 255).round()).float().mean())}  # fmt: skip
    print(f"tiled vs whole: max|diff| {tiling['max_abs_diff']:.2e}", file=sys.stderr)
    result = {
        "what": "PyTorch port (aligngemini.generators.tfjs) vs TensorFlow.js on the same input",
        "input": {"source": "skimage astronaut crop, stride 4", "shape_hw": [h, w], "range": "[0, 1]"},
        "tfjs": f"@tensorflow/tfjs@{TFJS_VERSION} cpu backend, node {subprocess.check_output(['node', '--version'], text=True).strip()}",
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} CPU, torch threads {torch.get_num_threads()}".strip(),
        "models": rows,
        "tiling": tiling,
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    worst = max(r["max_abs_diff"] for r in rows)
    return 0 if worst < 1e-3 and all(r["value_range_ours"] == r["value_range_package"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
