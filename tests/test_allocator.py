"""zoo.allocator: freed memory is reused instead of faulted in again at every step."""
import resource
import sys

import numpy as np
import pytest

from zoo import allocator

pytestmark = pytest.mark.skipif(allocator._glibc() is None, reason="glibc's mallopt only")


def _page_faults(rounds: int = 20, megabytes: int = 16) -> int:
    """Minor page faults of allocating, filling and freeing an array, `rounds` times (the
    life of one large activation tensor a training step), in 4 KB pages: NumPy's own
    transparent-huge-page advice is switched off meanwhile, so the count is the same
    whatever the kernel's huge-page setting."""
    from numpy._core.multiarray import _set_madvise_hugepage

    was = _set_madvise_hugepage(False)
    try:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(rounds):
            tensor = np.ones(megabytes * 2**20, np.uint8)
            del tensor
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    finally:
        _set_madvise_hugepage(was)


def test_kept_memory_is_reused_where_tensorflows_setting_faults_it_in_every_time():
    libc = allocator._glibc()
    # What glibc's defaults and TensorFlow's generator dataset leave: mmap, trim and top pad at 128 KB.
    for parameter in (allocator.M_MMAP_THRESHOLD, allocator.M_TRIM_THRESHOLD, allocator.M_TOP_PAD):
        libc.mallopt(parameter, 128 * 1024)
    faulted = _page_faults()
    try:
        assert allocator.keep_freed_memory()
        _page_faults(rounds=1)  # the first allocation grows the heap once
        kept = _page_faults()
    finally:
        allocator.keep_freed_memory()  # as importing ablations leaves every test process
    assert faulted > 20 * 4096 / 2, faulted  # each round faulted (most of) its 4096 pages in again
    assert kept < faulted / 20, (kept, faulted)


def test_importing_ablations_applies_the_settings_and_training_keeps_them():
    import ablations  # noqa: F401  (applies them on import)
    from ablations.train import KeepFreedMemory

    libc = allocator._glibc()
    libc.mallopt(allocator.M_TRIM_THRESHOLD, 128 * 1024)  # as fit's generator dataset does
    KeepFreedMemory().on_train_batch_begin(0)
    _page_faults(rounds=1)
    assert _page_faults() < 200
    assert "ablations" in sys.modules
