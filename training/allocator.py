"""glibc malloc settings that keep freed memory for reuse instead of handing it back.

TensorFlow on the CPU allocates each step's activations with malloc. With glibc's defaults
every tensor over 128 KB is mmapped and unmapped again, and TensorFlow's generator dataset
(which `fit` uses to read a PyDataset) sets M_TRIM_THRESHOLD to 128 KB as well, so each
training step faults its pages in afresh. Measured on the 2-core machine (selected decoder
at stride 2, batch 16 of 256 px tiles): 68 of 205 CPU-s went to the kernel (18 million
page faults), and epochs of the same work took 20 to 41 s. With the settings below: 12 CPU-s
in the kernel, epochs of 12.5-13 s, the same peak memory (3.07 GB).

glibc only (Linux); elsewhere every call here does nothing and says so by returning False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest on 64-bit: tensors up to 32 MB come from the heap
TRIM_THRESHOLD = 2**30  # give the heap top back only when a GiB lies free there
TOP_PAD = 64 * 2**20  # and grow it 64 MB at a time


@functools.cache
def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (raises AttributeError on a libc that is not glibc)
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Keep freed tensors' memory in the heap for the next step. Cheap (three mallopt calls),
    so it is applied again at every training batch: TensorFlow resets the trim threshold."""
    libc = _glibc()
    if libc is None:
        return False
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
    applied = [
        libc.mallopt(parameter, value) == 1 for parameter, value in settings
    ]  # each, even if one fails
    return all(applied)


def one_arena() -> bool:
    """One malloc arena for every thread, so memory one thread frees another reuses (with an
    arena per thread each keeps and trims its own). Only arenas made after the call obey it:
    call it before TensorFlow starts its threads (`for_training`)."""
    libc = _glibc()
    return libc is not None and libc.mallopt(M_ARENA_MAX, 1) == 1


def for_training() -> None:
    """Both settings, called by the training commands (the fit, the studies) before TensorFlow
    starts its threads. Never on import: a library user's process keeps its own malloc."""
    one_arena()
    keep_freed_memory()
