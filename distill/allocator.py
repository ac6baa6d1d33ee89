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
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the kernel now (glibc ``malloc_trim(0)``).

    Memory measurements call this first, so the resident size they start from
    holds live objects only, not pages that earlier work freed and kept.
    Returns False where there is no ``malloc_trim``.
    """
    malloc_trim = _glibc("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim(0)
    return True


def limit_memory(extra_bytes: int) -> None:
    """Let this process (and any it starts) allocate at most ``extra_bytes`` more than it holds now.

    RLIMIT_DATA bounds private writable memory: the heap, anonymous mappings
    (large tensors, onnxruntime's arenas, thread stacks). Unlike RLIMIT_AS it
    ignores mapped libraries and reserved address space, so the ~0.8 GB torch
    maps at import is the baseline, not the budget. An allocation past it fails
    (MemoryError, or torch's "can't allocate memory") instead of the kernel's
    OOM killer taking the process, or the whole server, down.
    """
    if not sys.platform.startswith("linux") or extra_bytes <= 0:
        return
    import resource

    limit = _data_bytes() + extra_bytes
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def _data_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


# What an allocation that hit the memory limit says, in torch, onnxruntime and C++.
_OUT_OF_MEMORY = ("can't allocate memory", "cannot allocate memory", "bad_alloc", "failed to allocate memory")


def out_of_memory(error: BaseException | None) -> str:
    """The line in which ``error`` (or what caused it) says an allocation failed; "" when it does not."""
    while error is not None:
        if isinstance(error, MemoryError):
            return str(error) or "MemoryError"
        for line in str(error).splitlines():
            if any(s in line.lower() for s in _OUT_OF_MEMORY):
                return " ".join(line.split())
        error = error.__cause__
    return ""


def _glibc(function: str):  # noqa: ANN202 (a ctypes function pointer)
    """A glibc function, or None where the C library is not glibc (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), function)
    except (OSError, AttributeError):
        return None
