"""The machine a number was measured on, and how a duration is measured on it."""
from __future__ import annotations

import os
import platform
import time


def describe() -> str:
    return f"{cpu_model()}, {os.cpu_count()} logical cores, {memory_gib():.0f} GiB RAM, {platform.system()}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def process_memory_gib() -> tuple[float, float]:
    """This process's resident memory now and at its peak, in GiB (Linux; zeros elsewhere)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    try:
        with open("/proc/self/statm") as handle:
            now = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError, IndexError):
        now = 0.0
    return now, peak


def memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return 0.0


def median_ms(fn, repeats: int) -> tuple[float, float]:
    """Median and 95th percentile of `repeats` timed calls of fn, in milliseconds."""
    import numpy as np

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times)), float(np.percentile(times, 95))
