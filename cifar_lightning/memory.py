"""The C allocator under PyTorch's CPU tensors: keep the memory a training step frees for the next step."""

import ctypes
import platform
import sys

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and never trim it (glibc only; elsewhere nothing changes).

    glibc's malloc maps any allocation above its mmap threshold (at most 32 MiB on 64-bit) straight from the
    operating system and unmaps it when freed. A training step allocates and frees the same large activations each
    step, so every step page-faults and zeroes them anew: elementwise ops (BatchNorm, GELU and their gradients) then
    run at a fraction of their speed once a batch's activations pass 32 MiB (e.g. the airbench net at batch 2,000
    in bf16, not at 1,024; docs/results.md). With mmap off (M_MMAP_MAX=0) and trimming off, freed memory stays in
    the process and the next step reuses it; the process's peak memory is the same, it is just not given back.

    Returns whether the allocator was changed. Raises nothing: a libc without mallopt is left as it is."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
