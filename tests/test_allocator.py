"""retain_freed_memory: after it, a block of 40 MB comes from the heap instead of its own mmap; the
environment switch and Detector.load's use of it."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from aligngemini import allocator
from aligngemini.detector import Detector

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# 40 MB is above glibc's largest dynamic mmap threshold (32 MB), so by default it always gets its own mapping,
# and below the 64 MB that retain_freed_memory sets. mallinfo2().hblks counts the blocks held in mappings.
PROBE = """
import ctypes, ctypes.util, json
from aligngemini.allocator import allocator_mode, retain_freed_memory
libc = ctypes.CDLL(ctypes.util.find_library("c"))
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def mapped_blocks_for_40mb():
    before = libc.mallinfo2().hblks
    block = libc.malloc(40 << 20)
    mapped = libc.mallinfo2().hblks - before
    libc.free(block)
    return mapped
default = mapped_blocks_for_40mb()
applied = retain_freed_memory()
print(json.dumps({"default": default, "applied": applied, "after": mapped_blocks_for_40mb(),
                  "mode": allocator_mode()}))
"""


def _probe(env_extra: dict[str, str]) -> dict[str, object]:
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="mallopt and mallinfo2 are glibc's")
def test_large_blocks_come_from_the_heap_once_applied() -> None:
    result = _probe({"ALIGNGEMINI_MALLOC": ""})
    assert result == {"default": 1, "applied": True, "after": 0, "mode": "retain-freed"}


@pytest.mark.skipif(not GLIBC, reason="mallopt and mallinfo2 are glibc's")
def test_system_leaves_the_allocator_alone() -> None:
    result = _probe({"ALIGNGEMINI_MALLOC": "system"})
    assert result == {"default": 1, "applied": False, "after": 1, "mode": "system"}


def test_detector_load_on_cpu_applies_it(tiny_bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.delenv("ALIGNGEMINI_MALLOC", raising=False)
    Detector.load(tiny_bundle_dir, device="cpu")
    assert allocator.allocator_mode() == ("retain-freed" if GLIBC else "system")
