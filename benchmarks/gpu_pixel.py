"""Time the paper's pixel expert on a GPU: DINOv2 ViT-L/14 at 336 px (random weights; speed does not
depend on them), forward (inference) and LoRA r=8 (qkv, proj, fc1, fc2) training steps.

The reference on one H100 with timm's own code (bf16): 1070 images/s forward, 151 images/s LoRA training at batch 64.

    python benchmarks/gpu_pixel.py --out benchmarks/results/gpu_pixel.json
    python benchmarks/gpu_pixel.py --tiny      # a CPU smoke run of the same code
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch


def build(name: str, img_size: int, lora: bool, device: torch.device) -> torch.nn.Module:
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=1, img_size=img_size)
    if lora:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["qkv", "proj", "fc1", "fc2"],
                         modules_to_save=["head"])  # fmt: skip
        model = get_peft_model(model, cfg)
    return model.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_forward(model, batch: int, size: int, device, dtype, iters: int, warmup: int) -> float:
    x = torch.randn(batch, 3, size, size, device=device)
    model.eval()
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
        for _ in range(warmup):
            model(x)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        sync(device)
    return batch * iters / (time.perf_counter() - t0)


def time_train(model, batch: int, size: int, device, dtype, iters: int, warmup: int) -> float:
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device).float()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    model.train()

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            logit = model(x).squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return batch * iters / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run with a tiny ViT")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd forward")
    args = ap.parse_args()

    if args.tiny:
        device, dtype, name, size = torch.device("cpu"), torch.float32, "vit_tiny_patch16_224", 64
        fwd_batches, train_batch, iters, warmup = [4], 4, 2, 1
    else:
        if not torch.cuda.is_available():
            print("gpu_pixel: no CUDA device; run with --tiny for a CPU smoke test", file=sys.stderr)
            return 2
        device, dtype, name, size = torch.device("cuda"), torch.bfloat16, "vit_large_patch14_dinov2", 336
        fwd_batches, train_batch, iters, warmup = [64, 128, 256], 64, 10, 3
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    result: dict = {
        "model": name, "img_size": size, "dtype": str(dtype), "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "forward_images_per_s": {}, "forward_bf16_weights_images_per_s": {},
    }  # fmt: skip
    model = build(name, size, lora=False, device=device)
    for b in fwd_batches:
        result["forward_images_per_s"][str(b)] = round(
            time_forward(model, b, size, device, dtype, iters, warmup), 1
        )
        print(
            f"forward autocast  batch {b:4d}: {result['forward_images_per_s'][str(b)]:8.1f} images/s",
            flush=True,
        )
    if device.type == "cuda":  # weights cast to bf16 once: no per-op casts
        mb = model.to(dtype)
        for b in fwd_batches:
            v = round(time_forward(mb, b, size, device, dtype, iters, warmup), 1)
            result["forward_bf16_weights_images_per_s"][str(b)] = v
            print(f"forward bf16 wts  batch {b:4d}: {v:8.1f} images/s", flush=True)
        if args.compile:
            mc = torch.compile(mb)
            b = fwd_batches[-1]
            v = round(time_forward(mc, b, size, device, dtype, iters, warmup + 2), 1)
            result["forward_compiled_images_per_s"] = {str(b): v}
            print(f"forward compiled  batch {b:4d}: {v:8.1f} images/s", flush=True)
        del mb, model
        torch.cuda.empty_cache()
    lora_model = build(name, size, lora=True, device=device)
    v = round(time_train(lora_model, train_batch, size, device, dtype, iters, warmup), 1)
    result["lora_train_images_per_s"] = {str(train_batch): v}
    print(f"LoRA r=8 train    batch {train_batch:4d}: {v:8.1f} images/s", flush=True)
    if device.type == "cuda":
        result["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    result["bar_h100"] = {"forward_images_per_s": 1070, "lora_train_images_per_s": 151}
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
