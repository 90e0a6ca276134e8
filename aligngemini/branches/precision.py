"""A branch's inference arithmetic (``precision`` in its bundle section) and whether a device has it natively;
the dtype names every command and branch accepts, and the default dtype per device.

"fp32", or "bf16": matrix products and convolutions in bfloat16, about twice as fast on CPUs with native
bf16 (AVX512-BF16 or AMX). Where the device has no native bf16 a "bf16" branch computes in fp32: emulated
bf16 is about 3 times slower than fp32 there. ``ALIGNGEMINI_BF16=off`` asks for fp32 everywhere.
"""

from __future__ import annotations

import functools
import os

import torch

PRECISIONS = ("fp32", "bf16")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}  # fmt: skip


def default_dtype(device: torch.device) -> torch.dtype:
    """The models' dtype where nobody names one: bf16 on a GPU, fp32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def parse_dtype(name: str | torch.dtype | None, default: torch.dtype) -> torch.dtype:
    """A dtype by name ("bf16", "bfloat16", ...), a torch dtype as it is, or ``default`` for None."""
    if name is None:
        return default
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def arithmetic(device: torch.device, dtype: torch.dtype, autocast_bf16: bool = False) -> str:
    """What a loaded branch computes in, e.g. "cpu:bfloat16" or "cpu:float32+autocast-bf16": scores computed
    in different arithmetic differ (the score cache keeps them apart)."""
    return f"{device.type}:{str(dtype).removeprefix('torch.')}" + ("+autocast-bf16" if autocast_bf16 else "")


def check_precision(precision: str, where: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"{where}: precision {precision!r} is unknown; use one of {PRECISIONS}")
    return precision


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` ("cpu", "cuda") multiplies bfloat16 matrices in hardware. ``ALIGNGEMINI_BF16=off``
    answers no everywhere: every branch then computes in fp32 (the same scores on any CPU, within fp32
    kernels)."""
    if os.environ.get("ALIGNGEMINI_BF16", "").lower() in ("off", "0", "no"):
        return False
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    return False
