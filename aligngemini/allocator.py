"""Keep freed memory in the process for CPU inference (glibc only).

A batch through a ViT on the CPU allocates and frees tensors of 5-30 MB in every layer. glibc's defaults
serve some of them with fresh ``mmap`` pages and hand freed memory at the top of the heap back to the system,
so the next layer pays page faults on memory it just released: on the 2-core dev box the starter's CLIP
tower spends about a tenth of its time there. Raising the mmap and trim thresholds keeps those pages in the
process. The cost is that the process keeps its peak working set instead of shrinking after a batch.

``ALIGNGEMINI_MALLOC=system`` leaves the allocator as it is. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt parameters from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Allocations below this come from the heap instead of fresh mmap pages (the largest a ViT-B/16 batch of 16
# at 192 px makes is about 30 MB).
MMAP_THRESHOLD = 64 << 20
# Free memory at the top of the heap up to this size stays in the process.
TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; returns whether they are raised."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("ALIGNGEMINI_MALLOC", "").lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not _applied:
        log.debug("glibc refused the mallopt thresholds; the allocator keeps its defaults")
    return _applied


def allocator_mode() -> str:
    """What the benchmarks report: "retain-freed" once applied, else "system"."""
    return "retain-freed" if _applied else "system"
