"""Keep freed memory in the process instead of handing it back to the kernel.

glibc serves allocations above its mmap threshold (128 KiB to 32 MiB,
adaptive) with fresh mappings and unmaps them on free; the next allocation
of the same size is faulted in and zeroed again by the kernel. A training
step allocates the same large activations every time (a data-free
generator's are ~100 MB at batch 256), so on CPU that churn can cost more
than the arithmetic (1.26x on our data-free MNIST loop at generator width
32; 2.7x on the wider loop this project started from). Serving everything
from the heap and never trimming it makes the second step reuse the first
step's pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameter numbers, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Tell glibc to stop mmap-ing large blocks and never trim the heap.

    Same effect as MALLOC_MMAP_MAX_=0 and a huge MALLOC_TRIM_THRESHOLD_, but
    applies to a running process. The heap then stays at its peak size, the
    price of the speed. Returns False where this is not glibc (no change).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
