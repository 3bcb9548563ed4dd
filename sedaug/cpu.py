"""Transparent huge pages for the CPU allocator.

The CRNN's full-resolution activations are ~120 MB tensors, which glibc serves with fresh mmaps that the kernel
zero-fills one 4 KiB page fault at a time, every training step. Asking glibc to madvise them as huge pages
(`glibc.malloc.hugetlb=1`) cuts those faults 512-fold: a CPU step runs ~1.3x faster at the same memory. Glibc
reads its tunables only at process start, hence the re-exec.
"""

from __future__ import annotations

import os
import sys

TUNABLES = "glibc.malloc.hugetlb=1"


def reexec_with_huge_pages(module: str) -> None:
    """Re-run `python -m module argv...` once with the tunable set, unless the user set GLIBC_TUNABLES."""
    if sys.platform.startswith("linux") and "GLIBC_TUNABLES" not in os.environ:
        os.environ["GLIBC_TUNABLES"] = TUNABLES
        os.execv(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]])
