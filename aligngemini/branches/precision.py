"""A branch's inference arithmetic (``precision`` in its bundle section) and whether a device has it natively.

"fp32", or "bf16": matrix products and convolutions in bfloat16, about twice as fast on CPUs with native
bf16 (AVX512-BF16 or AMX). Where the device has no native bf16 a "bf16" branch computes in fp32: emulated
bf16 is about 3 times slower than fp32 there. ``ALIGNGEMINI_BF16=off`` asks for fp32 everywhere.
"""

from __future__ import annotations

import functools
import os

import torch

PRECISIONS = ("fp32", "bf16")


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
