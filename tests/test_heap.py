"""A training process keeps the memory it frees (training/heap.py): checked through glibc's own accounting, in
fresh processes, since the setting is process-wide."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import ctypes, sys
    from diffwave.training.heap import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                         "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    applied = keep_freed_memory() if sys.argv[1] == "keep" else False
    before = libc.mallinfo2().hblkhd  # bytes in blocks mapped on their own
    block = libc.malloc(64 << 20)  # above any default threshold: glibc maps it on its own
    mapped = libc.mallinfo2().hblkhd - before
    libc.free(block)
    print(applied, mapped >= 64 << 20)
""")


def probe(mode: str) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_blocks_come_from_the_heap_once_kept_and_are_mapped_on_their_own_by_default() -> None:
    assert probe("default") == ["False", "True"]
    assert probe("keep") == ["True", "False"]
