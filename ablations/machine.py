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
