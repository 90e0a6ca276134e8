"""Time the paper's semantic branch on a GPU: Qwen2.5-VL-7B-Instruct with random weights (speed does not
depend on them) at 448 x 448, through the branch's own code paths:

  (a) logit read-out (one forward, ``logits_to_keep=1``), images/s at batch 8, 16, 32; plus the same
      forward with full logits (what a plain transformers call computes) and end to end through
      ``VlmSemanticBranch.score`` (processor on the CPU included);
  (b) explanations: 48 generated tokens (forced, greedy) at batch 16, images/s;
  (c) one LoRA r=16 SFT step (the ``semantic-vlm`` task's model and collate) at batch 8, images/s.

Speed-ups that leave outputs (nearly) unchanged are timed separately: the grouped window attention for
the vision tower (``grouped_vision_attention``, one SDPA call per window length instead of one per
window), flash_attention_2 when the flash-attn package is installed, and ``--compile`` (off by default).
The reference on one H100 with transformers' own code (random weights, bf16): 35.5 images/s read-out, 6.2 explanations, 8.6
training.

    python benchmarks/gpu_semantic.py --out benchmarks/results/gpu_semantic.json
    python benchmarks/gpu_semantic.py --tiny      # a CPU smoke run of the same code, tiny config

Works with transformers 5.17+ (the model is built with ``_from_config`` directly on the GPU in bf16,
no CPU copy); the tokenizer is a byte-level BPE trained on the spot (its vocabulary fits the model's).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

# config.json of Qwen/Qwen2.5-VL-7B-Instruct (the values that shape compute)
QWEN25_VL_7B: dict[str, Any] = {
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "hidden_act": "silu",
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "use_sliding_window": False,
        "sliding_window": 32768,
        "max_window_layers": 28,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "hidden_act": "silu",
        "in_channels": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
    },
    "tie_word_embeddings": False,
}

TINY: dict[str, Any] = {
    "text_config": {
        "vocab_size": 4096,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
    },
    "tie_word_embeddings": False,
}


# ------------------------------------------------------------------------------------------------ build


def build_processor(size: int, vocab: int) -> Any:
    """The real Qwen2.5-VL processor classes around a BPE tokenizer trained here."""
    import transformers
    from tiny_vlm import QWEN_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS, train_bpe_tokenizer
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLProcessor

    from aligngemini.branches.semantic.prompts import DETECT_PROMPT, EXPLAIN_PROMPT

    # trained on the prompts with a larger vocabulary than the tests', so that they tokenize into whole
    # words, about as many tokens as Qwen's own tokenizer makes of them
    prompts = (DETECT_PROMPT.format(real="real", fake="fake"), EXPLAIN_PROMPT, "You are a helpful assistant.")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe_tokenizer(
            QWEN_SPECIAL_TOKENS, vocab_size=min(vocab, 2000), extra_texts=prompts
        ),
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        padding_side="left",
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    bounds = {"min_pixels": 56 * 56, "max_pixels": size * size}
    image_processor = None
    names = ["Qwen2VLImageProcessor", "Qwen2VLImageProcessorPil"]
    bases = {c.__name__ for c in transformers.Qwen2VLImageProcessor.__mro__}
    if not any("Torchvision" in b or "Fast" in b for b in bases):
        names.insert(0, "Qwen2VLImageProcessorFast")  # releases where the torch-based one is still "...Fast"
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is None:
            continue
        try:
            image_processor = cls(**bounds)
            break
        except Exception as exc:  # noqa: BLE001 - e.g. a torchvision-backed class without torchvision
            print(f"[build] {name} unavailable ({type(exc).__name__}: {exc})", file=sys.stderr)
    if image_processor is None:
        raise SystemExit("no Qwen2-VL image processor class could be built with this transformers")
    try:
        video = transformers.Qwen2VLVideoProcessor()
        return Qwen2_5_VLProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            video_processor=video,
            chat_template=QWEN_CHAT_TEMPLATE,
        )
    except Exception as exc:  # noqa: BLE001 - the video half is unused here
        print(f"[build] processor without video processor ({type(exc).__name__}: {exc})", file=sys.stderr)
        return Qwen2_5_VLProcessor(
            image_processor=image_processor, tokenizer=tok, chat_template=QWEN_CHAT_TEMPLATE
        )


def build_model(spec: dict[str, Any], processor: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Random-weight Qwen2.5-VL initialised in place on ``device`` in ``dtype`` (no CPU copy)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = processor.tokenizer
    spec = copy.deepcopy(spec)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    spec["text_config"].update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                               pad_token_id=ids["<|endoftext|>"])  # fmt: skip
    if len(tok) > spec["text_config"]["vocab_size"]:
        raise SystemExit(f"tokenizer has {len(tok)} tokens, more than the model's vocabulary")
    config = Qwen2_5_VLConfig(
        **spec,
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    cls = Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(0)
    with torch.device(device):
        try:
            model = cls._from_config(config, dtype=dtype, attn_implementation="sdpa")
        except TypeError:  # older keyword
            model = cls._from_config(config, torch_dtype=dtype, attn_implementation="sdpa")
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    return model.eval()


def set_vision_attention(model: Any, name: str) -> None:
    """Switch only the vision tower's attention implementation (the language model keeps SDPA)."""
    from aligngemini.branches.semantic.vlm import use_grouped_vision_attention

    if name == "grouped":
        if not use_grouped_vision_attention(model):
            raise RuntimeError("grouped vision attention did not apply")
        return
    cfgs = {id(model.config.vision_config): model.config.vision_config}
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and getattr(c, "model_type", None) == model.config.vision_config.model_type:
            cfgs[id(c)] = c
    for c in cfgs.values():
        c._attn_implementation_internal = name


def set_text_attention(model: Any, name: str) -> None:
    cfgs = {id(model.config.text_config): model.config.text_config}
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and getattr(c, "model_type", None) == model.config.text_config.model_type:
            cfgs[id(c)] = c
    for c in cfgs.values():
        c._attn_implementation_internal = name


# ------------------------------------------------------------------------------------------------ timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, iters: int, warmup: int = 1) -> float:
    """Mean seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


def linear_tflop_per_image(spec: dict[str, Any], size: int, seq_len: int) -> float:
    """Matmul FLOPs of one read-out forward (linear layers and attention scores; norms etc. left out)."""
    v, t = spec["vision_config"], spec["text_config"]
    patches = (size // v["patch_size"]) ** 2
    merged = patches // v["spatial_merge_size"] ** 2
    hv, iv = v["hidden_size"], v["intermediate_size"]
    win = (v["window_size"] // v["patch_size"]) ** 2
    n_full = len(v["fullatt_block_indexes"])
    vision = v["depth"] * 2 * patches * (4 * hv * hv + 3 * hv * iv)
    vision += 4 * patches * hv * (win * (v["depth"] - n_full) + patches * n_full)
    vision += 2 * patches * 3 * v["temporal_patch_size"] * v["patch_size"] ** 2 * hv
    mh = hv * v["spatial_merge_size"] ** 2
    vision += 2 * merged * (mh * mh + mh * v["out_hidden_size"])
    h, inter = t["hidden_size"], t["intermediate_size"]
    kv = h // t["num_attention_heads"] * t["num_key_value_heads"]
    text = t["num_hidden_layers"] * (
        2 * seq_len * (2 * h * h + 2 * h * kv + 3 * h * inter) + 4 * seq_len * seq_len * h
    )
    text += 2 * h * t["vocab_size"]  # one position through lm_head
    return (vision + text) / 1e12


def random_images(n: int, size: int, seed: int = 0) -> list[Any]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


# ------------------------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--tiny", action="store_true", help="tiny config on the CPU (a smoke run of this script)")
    ap.add_argument("--size", type=int, help="image side in pixels (448; tiny: 56)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", help="read-out batches (8 16 32; tiny: 2 4)")
    ap.add_argument("--gen-batch", type=int, help="explanation batch (16; tiny: 2)")
    ap.add_argument("--gen-tokens", type=int, help="generated tokens per explanation (48; tiny: 4)")
    ap.add_argument("--train-batch", type=int, help="LoRA step batch (8; tiny: 2)")
    ap.add_argument("--iters", type=int, help="timed calls per measurement (3; tiny: 1)")
    ap.add_argument("--budget-s", type=float, default=210.0, help="skip remaining measurements after this")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd language model")
    args = ap.parse_args()

    tiny = args.tiny
    if not tiny and not torch.cuda.is_available():
        print("gpu_semantic.py: no CUDA GPU here; run it on a GPU machine, or --tiny for a CPU smoke run",
              file=sys.stderr)  # fmt: skip
        return 2
    device = torch.device("cpu" if tiny else "cuda")
    dtype = torch.float32 if tiny else torch.bfloat16
    size = args.size or (56 if tiny else 448)
    batch_sizes = args.batch_sizes or ([2, 4] if tiny else [8, 16, 32])
    gen_batch = args.gen_batch or (2 if tiny else 16)
    gen_tokens = args.gen_tokens or (4 if tiny else 48)
    train_batch = args.train_batch or (2 if tiny else 8)
    iters = args.iters or (1 if tiny else 3)
    spec = TINY if tiny else QWEN25_VL_7B
    if tiny:
        torch.set_num_threads(2)
    started = time.perf_counter()

    import transformers

    from aligngemini.branches.semantic.vlm import VlmBranchConfig, VlmSemanticBranch, model_inputs

    t0 = time.perf_counter()
    processor = build_processor(size, spec["text_config"]["vocab_size"])
    model = build_model(spec, processor, device, dtype)
    sync(device)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[build] {n_params / 1e9:.2f} B parameters in {build_s:.1f} s on {device}", file=sys.stderr)

    cfg = VlmBranchConfig(
        model="(random)", min_pixels=56 * 56, max_pixels=size * size, batch_size=max(batch_sizes)
    )
    branch = VlmSemanticBranch(model, processor, cfg, device=device, dtype=dtype)
    images = random_images(max(batch_sizes + [gen_batch, train_batch]), size)
    inputs = {b: model_inputs(processor, [branch.prompts.detect_text] * b, images[:b], device, dtype)
              for b in sorted(set(batch_sizes))}  # fmt: skip
    seq_len = int(next(iter(inputs.values()))["input_ids"].shape[1])
    tflop = linear_tflop_per_image(spec, size, seq_len)

    results: dict[str, Any] = {
        "model": "Qwen2.5-VL-7B-Instruct config, random weights" if not tiny else "tiny Qwen2.5-VL config",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "image_size": size,
        "tokens_per_image_sequence": seq_len,
        "tflop_per_image_readout": round(tflop, 3),
        "build_seconds": round(build_s, 1),
        "readout": [],
        "readout_end_to_end": [],
        "explain": [],
        "train": [],
        "skipped": [],
        "checks": {},
    }
    rows: list[tuple[str, str, int, float, str]] = []

    def over_budget(what: str) -> bool:
        if time.perf_counter() - started > args.budget_s:
            results["skipped"].append(what)
            print(f"[skip] {what}: over the {args.budget_s:.0f} s budget", file=sys.stderr)
            return True
        return False

    def readout(b: int, keep_last: bool = True) -> torch.Tensor:
        kw = {"logits_to_keep": 1} if keep_last else {}
        with torch.inference_mode():
            return model(**inputs[b], use_cache=False, **kw).logits[:, -1, :]

    answer_ids = torch.tensor(branch.prompts.answer_token_ids, device=device)

    def p_fake(logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.index_select(-1, answer_ids), dim=-1)[:, 1]

    # reference logits of the default implementation, to check that variants keep the outputs
    ref_b = min(batch_sizes)
    ref = readout(ref_b).float()
    results["checks"]["finite_logits"] = bool(torch.isfinite(ref).all())

    # count how the vision tower calls the grouped attention: packed windows (the fast path) or one by one
    from aligngemini.branches.semantic import vlm as vlm_module

    packed_calls = {"packed": 0, "single": 0}
    grouped_fn = vlm_module._grouped_varlen_sdpa

    def counting(*a: Any, **kw: Any) -> Any:
        packed_calls["packed" if kw.get("cu_seq_lens_q") is not None else "single"] += 1
        return grouped_fn(*a, **kw)

    vlm_module._grouped_varlen_sdpa = counting
    results["checks"]["grouped_vision_calls"] = packed_calls

    variants = [("sdpa", "sdpa"), ("sdpa+grouped-vision", "grouped")]
    try:
        import flash_attn  # noqa: F401

        if device.type == "cuda":
            variants.append(("flash_attention_2", "flash_attention_2"))
    except ImportError:
        results["skipped"].append("flash_attention_2 (flash-attn not installed)")

    # (a) read-out
    for label, impl in variants:
        if over_budget(f"readout {label}"):
            continue
        try:
            set_vision_attention(model, impl)
            if impl == "flash_attention_2":
                set_text_attention(model, impl)
            now = readout(ref_b).float()
            results["checks"][f"max_abs_logit_diff_{label}"] = (now - ref).abs().max().item()
            results["checks"][f"max_abs_p_fake_diff_{label}"] = (p_fake(now) - p_fake(ref)).abs().max().item()
            for b in batch_sizes:
                if over_budget(f"readout {label} b{b}"):
                    break
                sec = timed(lambda b=b: readout(b), device, iters)
                ips = b / sec
                results["readout"].append({"variant": label, "batch": b, "images_per_s": round(ips, 2),
                                           "ms_per_batch": round(sec * 1e3, 1),
                                           "tflops": round(tflop * ips, 1)})  # fmt: skip
                rows.append(("readout", label, b, ips, f"{tflop * ips:.0f} TFLOP/s"))
        except Exception as exc:  # noqa: BLE001 - a variant that fails is reported, not fatal
            results["skipped"].append(f"readout {label}: {type(exc).__name__}: {exc}")
        finally:
            set_vision_attention(model, "sdpa")
            set_text_attention(model, "sdpa")

    best = max(results["readout"], key=lambda r: r["images_per_s"], default=None)
    best_variant = best["variant"] if best else "sdpa"
    big = max(batch_sizes)

    def use(variant: str) -> None:
        impl = dict(variants).get(variant, "sdpa")
        set_vision_attention(model, impl)
        if impl == "flash_attention_2":
            set_text_attention(model, impl)

    if not over_budget("readout full logits"):  # what a plain transformers forward computes
        sec = timed(lambda: readout(big, keep_last=False), device, iters)
        results["readout"].append({"variant": "sdpa, full logits", "batch": big,
                                   "images_per_s": round(big / sec, 2), "ms_per_batch": round(sec * 1e3, 1)})  # fmt: skip
        rows.append(("readout", "sdpa, full logits", big, big / sec, ""))

    if not over_budget("readout end to end"):
        for variant in dict.fromkeys(["sdpa", best_variant]):
            use(variant)
            ims = images[:big]
            sec = timed(lambda ims=ims: branch.score(ims), device, iters)
            results["readout_end_to_end"].append({"variant": variant, "batch": big, "images_per_s": round(big / sec, 2),
                                                  "includes": "processor on CPU, transfer, forward"})  # fmt: skip
            rows.append(("score() end to end", variant, big, big / sec, "processor included"))
        use("sdpa")

    # (b) explanations: forced length, greedy
    from transformers import GenerationConfig

    gen = GenerationConfig(max_new_tokens=gen_tokens, min_new_tokens=gen_tokens, do_sample=False,
                           pad_token_id=model.generation_config.pad_token_id,
                           eos_token_id=model.generation_config.eos_token_id)  # fmt: skip
    gen_inputs = model_inputs(
        processor, [branch.prompts.explain_text] * gen_batch, images[:gen_batch], device, dtype
    )

    def generate() -> int:
        with torch.inference_mode():
            out = model.generate(**gen_inputs, generation_config=gen)
        return int(out.shape[1] - gen_inputs["input_ids"].shape[1])

    for variant in dict.fromkeys(["sdpa", best_variant]):
        if over_budget(f"explain {variant}"):
            continue
        use(variant)
        new_tokens = generate()
        sec = timed(generate, device, max(1, iters - 1), warmup=0)
        results["explain"].append({"variant": variant, "batch": gen_batch, "new_tokens": new_tokens,
                                   "images_per_s": round(gen_batch / sec, 2), "seconds_per_batch": round(sec, 2)})  # fmt: skip
        rows.append(("explain", f"{variant}, {new_tokens} tok", gen_batch, gen_batch / sec, ""))
    use("sdpa")

    # (c) one LoRA SFT step through the task's model and collate
    peft_model = None
    if not over_budget("train"):
        try:
            from peft import LoraConfig, get_peft_model

            from aligngemini.branches.semantic.vlm_task import (
                LLM_PROJECTIONS,
                VlmSftModel,
                collate_vlm,
                language_lora_pattern,
            )

            model.config.use_cache = False
            lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none",
                              target_modules=language_lora_pattern(model, LLM_PROJECTIONS))  # fmt: skip
            peft_model = get_peft_model(model, lora)
            sft = VlmSftModel(peft_model, branch.prompts)
            sft.train()
            items = [{"image": im, "label": float(i % 2)} for i, im in enumerate(images[:train_batch])]
            batch = {k: v.to(device) for k, v in collate_vlm(processor, branch.prompts, items).items()}
            params = [p for p in sft.parameters() if p.requires_grad]
            for p in params:  # LoRA weights train in fp32 (peft's default); the base stays bf16
                p.data = p.data.float()
            opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
            amp = (
                torch.autocast("cuda", dtype=torch.bfloat16)
                if device.type == "cuda"
                else contextlib.nullcontext()
            )

            def step() -> None:
                with amp:
                    loss = sft(batch)["loss"]
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            for variant in dict.fromkeys(["sdpa", best_variant]):
                if over_budget(f"train {variant}"):
                    continue
                use(variant)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                sec = timed(step, device, iters)
                peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
                results["train"].append({"variant": variant, "batch": train_batch, "lora_r": 16,
                                         "images_per_s": round(train_batch / sec, 2),
                                         "ms_per_step": round(sec * 1e3, 1),
                                         "peak_gib": round(peak, 1) if peak else None})  # fmt: skip
                rows.append(("train LoRA r16", variant, train_batch, train_batch / sec,
                             f"peak {peak:.1f} GiB" if peak else ""))  # fmt: skip
            use("sdpa")
        except Exception as exc:  # noqa: BLE001
            results["skipped"].append(f"train: {type(exc).__name__}: {exc}")

    # optional, last: torch.compile of the language model (read-out only), on the model without LoRA
    if peft_model is not None:
        model = peft_model.unload()
        model.eval()
    if args.compile and not over_budget("compiled language model"):
        lm = model.model.language_model
        try:
            lm.forward = torch.compile(lm.forward)  # an instance attribute: deleted afterwards
            use(best_variant)
            sec = timed(lambda: readout(big), device, iters, warmup=2)
            results["readout"].append({"variant": f"{best_variant} + compiled LM", "batch": big,
                                       "images_per_s": round(big / sec, 2)})  # fmt: skip
            rows.append(("readout", f"{best_variant} + compiled LM", big, big / sec, ""))
        except Exception as exc:  # noqa: BLE001
            results["skipped"].append(f"compile: {type(exc).__name__}: {exc}")
        finally:
            lm.__dict__.pop("forward", None)
            use("sdpa")

    results["total_seconds"] = round(time.perf_counter() - started, 1)
    print(f"\n{results['model']} at {size}px on {results['device']} ({results['dtype']}), "
          f"{seq_len} tokens per sequence, {tflop:.2f} TFLOP per read-out image")  # fmt: skip
    print(f"{'work':<22}{'variant':<34}{'batch':>6}{'images/s':>11}  note")
    for work, variant, b, ips, note in rows:
        print(f"{work:<22}{variant:<34}{b:>6}{ips:>11.2f}  {note}")
    for s in results["skipped"]:
        print(f"skipped: {s}")
    print(f"checks: {json.dumps(results['checks'])}   total {results['total_seconds']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
