"""zoo.allocator: freed memory is reused instead of faulted in again at every step."""

import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from training import allocator

pytestmark = pytest.mark.skipif(allocator._glibc() is None, reason="glibc's mallopt only")

ROOT = Path(__file__).resolve().parents[1]
ROUNDS, PAGES = 20, 16 * 2**20 // 4096  # 20 rounds of a 16 MB tensor, 4096 pages each


def _page_faults(rounds: int = ROUNDS) -> int:
    """Minor page faults of allocating, filling and freeing a 16 MB array, `rounds` times (the
    life of one large activation tensor a training step), in 4 KB pages: NumPy's own
    transparent-huge-page advice is switched off meanwhile, so the count is the same
    whatever the kernel's huge-page setting."""
    from numpy._core.multiarray import _set_madvise_hugepage

    was = _set_madvise_hugepage(False)
    try:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(rounds):
            tensor = np.ones(PAGES * 4096, np.uint8)
            del tensor
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    finally:
        _set_madvise_hugepage(was)


def _as_tensorflow_leaves_it() -> None:
    """glibc's mmap threshold and top pad (128 KB) with the 128 KB trim threshold that
    TensorFlow's generator dataset sets."""
    for parameter in (allocator.M_MMAP_THRESHOLD, allocator.M_TRIM_THRESHOLD, allocator.M_TOP_PAD):
        allocator._glibc().mallopt(parameter, 128 * 1024)


def _faults_once_warm() -> int:
    _page_faults(rounds=1)  # the first allocation grows the heap once
    return _page_faults()


def _faults_in_a_fresh_process(steps: str) -> list[int]:
    """Run `steps` in a new Python process and return the numbers it prints. Fresh because a
    test process's heap may already hold a free 16 MB chunk (left by earlier tests) that malloc
    hands out before it ever looks at the mmap threshold: CI saw 0 faults with TensorFlow's
    settings that way."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
    """) + textwrap.dedent(steps)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return [int(word) for word in run.stdout.split()]


def test_kept_memory_is_reused_where_tensorflows_setting_faults_it_in_every_time():
    faulted, settings_applied, kept = _faults_in_a_fresh_process("""
        from training import allocator
        import test_allocator
        test_allocator._as_tensorflow_leaves_it()
        print(test_allocator._page_faults())
        print(int(allocator.keep_freed_memory()))
        print(test_allocator._faults_once_warm())
    """)
    assert faulted > ROUNDS * PAGES / 2, faulted  # each round faulted (most of) its pages in again
    assert settings_applied == 1
    assert kept < faulted / 20, (kept, faulted)


def test_training_applies_the_settings_again_at_every_batch():
    """After importing `ablations` (which applies the settings), TensorFlow's settings fault
    every round in again until the training callback applies ours once more."""
    faulted, kept = _faults_in_a_fresh_process("""
        from training.train import KeepFreedMemory
        import test_allocator
        test_allocator._as_tensorflow_leaves_it()
        print(test_allocator._faults_once_warm())
        KeepFreedMemory().on_train_batch_begin(0)
        print(test_allocator._faults_once_warm())
    """)
    assert faulted > ROUNDS * PAGES / 2, faulted
    assert kept < 200, kept


@pytest.mark.parametrize("for_training", [False, True])
def test_the_training_commands_settings_keep_freed_memory(for_training):
    """In a fresh process, after only the trim threshold is set as TensorFlow sets it: glibc's
    own settings fault every round in, those `allocator.for_training` applies do not. Importing
    a package applies nothing (a library user's process keeps its own malloc)."""
    (faults,) = _faults_in_a_fresh_process(f"""
        import ablations, training  # noqa: F401
        {"from training import allocator; allocator.for_training()" if for_training else ""}
        from training import allocator
        import test_allocator
        allocator._glibc().mallopt(allocator.M_TRIM_THRESHOLD, 128 * 1024)
        print(test_allocator._faults_once_warm())
    """)
    if for_training:
        assert faults < 200, faults
    else:
        assert faults > ROUNDS * PAGES / 2, faults
