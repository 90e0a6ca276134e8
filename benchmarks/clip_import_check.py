"""Check the CLIP ONNX import: onnxruntime (INT8 graph) against our dequantized fp32 PyTorch port.

Both see the same preprocessed photos (CLIP's own crop preprocessing); the script reports the cosine similarity
of their image embeddings per image (target > 0.97), the cosine between *different* images as the reference
level a broken import would sit near, and CPU time per image for each runtime. Writes
``benchmarks/results/clip_import_check.json``.

A third column runs our port with the INT8 graph's arithmetic emulated exactly (each linear layer's input
quantized per tensor to uint8 as DynamicQuantizeLinear does, times the int8 weights, accumulated without
overflow). It separates two sources of disagreement: the quantization itself (fp32 vs emulated) and the
runtime's integer kernel (onnxruntime vs emulated). On CPUs without VNNI, onnxruntime's u8 x s8 kernel
accumulates pairs in saturating int16 and its outputs drift far from the exact product.

    python benchmarks/clip_import_check.py [--tower SOURCE] [--threads 2] [--realorai DIR]
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

from aligngemini.branches.semantic.clip_import import (
    STARTER_TOWER,
    STARTER_TOWER_SHA256,
    emulate_dynamic_int8,
    load_onnx_clip_tower,
)
from aligngemini.branches.semantic.preprocess import CLIP_MEAN, CLIP_STD, preprocess_image
from aligngemini.resolve import resolve

RESULT = Path(__file__).parent / "results" / "clip_import_check.json"


def photos(realorai: Path | None, per_class: int) -> list[tuple[str, Image.Image]]:
    """Real photographs from scikit-image and scikit-learn, plus realorai photos and AI images."""
    import skimage.data as skd
    from sklearn.datasets import load_sample_images

    out: list[tuple[str, Image.Image]] = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "camera"):
        out.append((f"skimage:{name}", Image.fromarray(getattr(skd, name)()).convert("RGB")))
    out.append(("skimage:stereo_motorcycle", Image.fromarray(skd.stereo_motorcycle()[0]).convert("RGB")))
    sample = load_sample_images()
    for fname, arr in zip(sample.filenames, sample.images, strict=True):
        out.append((f"sklearn:{Path(fname).name}", Image.fromarray(arr)))
    if realorai is not None and realorai.is_dir():
        for sub in ("real", "ai"):
            for path in sorted((realorai / sub).glob("*.jpg"))[:per_class]:
                out.append((f"realorai:{sub}/{path.name}", Image.open(path).convert("RGB")))
    return out


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return sorted(
        f for f in flags if f in {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"}
    )


def time_per_image(fn, batch: np.ndarray, repeats: int) -> float:
    fn(batch[:1])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        for i in range(len(batch)):
            fn(batch[i : i + 1])
    return (time.perf_counter() - start) * 1000 / (repeats * len(batch))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tower", default=STARTER_TOWER)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--realorai", type=Path, default=Path("/work/shared/datasets/realorai"))
    ap.add_argument("--per-class", type=int, default=3, help="realorai images per class")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)

    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    onnx_path = resolve(args.tower, sha256=STARTER_TOWER_SHA256 if args.tower == STARTER_TOWER else None)
    t0 = time.perf_counter()
    model, report = load_onnx_clip_tower(onnx_path)
    load_s = time.perf_counter() - t0

    items = photos(args.realorai, args.per_class)
    size = int(model.config.image_size)
    batch = torch.stack(
        [preprocess_image(img, size, mode="crop", mean=CLIP_MEAN, std=CLIP_STD) for _, img in items]
    )
    x = batch.numpy()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    out_name = session.get_outputs()[0].name

    def run_ort(b: np.ndarray) -> np.ndarray:
        return session.run([out_name], {input_name: b})[0]

    @torch.inference_mode()
    def run_torch(b: np.ndarray) -> np.ndarray:
        return model(pixel_values=torch.from_numpy(b)).image_embeds.numpy()

    ref = np.concatenate([run_ort(x[i : i + 1]) for i in range(len(x))])
    ours = run_torch(x)
    ours_one = np.concatenate([run_torch(x[i : i + 1]) for i in range(len(x))])
    with emulate_dynamic_int8(model):  # batch 1, as onnxruntime ran: activation scales are per tensor
        emulated = np.concatenate([run_torch(x[i : i + 1]) for i in range(len(x))])

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    cos = (unit(ref) * unit(ours)).sum(1)
    cos_emu_fp32 = (unit(emulated) * unit(ours)).sum(1)
    cos_emu_ort = (unit(emulated) * unit(ref)).sum(1)
    cross = unit(ref) @ unit(ref).T
    off_diag = cross[~np.eye(len(ref), dtype=bool)]
    ms_ort = time_per_image(run_ort, x, args.repeats)
    ms_torch = time_per_image(run_torch, x, args.repeats)
    t0 = time.perf_counter()
    run_torch(x)
    ms_torch_batch = (time.perf_counter() - t0) * 1000 / len(x)

    result = {
        "tower": args.tower,
        "onnx_sha256": report.sha256,
        "onnx_input": {"name": report.input_name, "shape": report.input_shape},
        "onnx_outputs": report.output_names,
        "quantization": report.quantization,
        "quantized_tensors": report.quantized_tensors,
        "config": report.config,
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_int8_flags": cpu_flags(),
        "threads": args.threads,
        "preprocessing": "shortest side to 224 bicubic, centre crop 224, CLIP mean/std",
        "images": [
            {
                "image": name,
                "cosine_ort_vs_torch": round(float(c), 5),
                "cosine_emulated_int8_vs_torch": round(float(e), 5),
                "cosine_ort_vs_emulated_int8": round(float(r), 5),
            }
            for (name, _), c, e, r in zip(items, cos, cos_emu_fp32, cos_emu_ort, strict=True)
        ],
        "cosine_min": round(float(cos.min()), 5),
        "cosine_mean": round(float(cos.mean()), 5),
        "cosine_emulated_int8_vs_torch_min": round(float(cos_emu_fp32.min()), 5),
        "cosine_emulated_int8_vs_torch_mean": round(float(cos_emu_fp32.mean()), 5),
        "cosine_ort_vs_emulated_int8_mean": round(float(cos_emu_ort.mean()), 5),
        "cross_image_cosine_mean_onnx": round(float(off_diag.mean()), 5),
        "cross_image_cosine_max_onnx": round(float(off_diag.max()), 5),
        "batch_vs_single_max_abs_diff": float(np.abs(ours - ours_one).max()),
        "ms_per_image_onnxruntime_int8_batch1": round(ms_ort, 1),
        "ms_per_image_torch_fp32_batch1": round(ms_torch, 1),
        "ms_per_image_torch_fp32_batch_all": round(ms_torch_batch, 1),
        "torch_load_s": round(load_s, 2),
        "target": 0.97,
        "passed": bool(cos.min() > 0.97),
        "passed_exact_int8": bool(cos_emu_fp32.min() > 0.97),
    }
    if not any(f in result["cpu_int8_flags"] for f in ("avx512_vnni", "avx_vnni", "amx_int8")):
        result["note"] = (
            "this CPU has no VNNI: onnxruntime's u8 x s8 kernel accumulates pairs in saturating int16, so its "
            "INT8 outputs here are not the graph's exact arithmetic; compare with the emulated column and with "
            "a run on a VNNI CPU (clip_import_check_xeon_vnni.json)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    width = max(len(name) for name, _ in items)
    print(f"{'image':<{width}}  ort~torch  emulated-int8~torch  ort~emulated-int8")
    for (name, _), c, e, r in zip(items, cos, cos_emu_fp32, cos_emu_ort, strict=True):
        print(f"{name:<{width}}  {c:9.4f}  {e:19.4f}  {r:17.4f}")
    print(
        f"min {cos.min():.4f}  mean {cos.mean():.4f}  (different images: mean {off_diag.mean():.3f}, "
        f"max {off_diag.max():.3f})  target > 0.97: {'PASS' if result['passed'] else 'FAIL'}"
    )
    print(
        f"onnxruntime {ort.__version__}: {ms_ort:.1f} ms/image; torch {torch.__version__} fp32: {ms_torch:.1f} "
        f"ms/image (batch 1), {ms_torch_batch:.1f} (batch {len(x)}); {args.threads} threads; "
        f"cpu int8 flags: {' '.join(result['cpu_int8_flags']) or 'none'}"
    )
    if "note" in result:
        print("note: " + result["note"])
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
