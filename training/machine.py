"""The machine a number was measured on, and how a duration is measured on it."""

from __future__ import annotations

import os
import platform
import resource
import time

import numpy as np
import psutil


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
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times)), float(np.percentile(times, 95))


class OtherWork:
    """How much of the CPU other work took while a benchmark ran: system-wide busy CPU time
    less this process's and its descendants' (the benchmark's own servers included), in cores
    on average since it was made.

    Why not the load average: it counts the benchmark's own servers and clients, so a
    benchmark alone on the machine read as "other work shared the CPU", while a run beside a
    training job was told apart from it only by degree. The serving latencies recorded before
    2026-12-01 were taken beside other studies, and came out 2.5-3.5x slower than alone."""

    def __init__(self):
        self._started = self._reading()

    def since_start(self) -> tuple[float, float, float]:
        """Seconds since it was made: wall, busy CPU system-wide, CPU of this process tree."""
        wall, busy, own = (now - then for now, then in zip(self._reading(), self._started))
        return wall, busy, own

    def cores(self) -> float:
        wall, busy, own = self.since_start()
        return max(0.0, (busy - own) / wall) if wall > 0 else 0.0

    def note(self) -> str:
        cores = self.cores()
        verdict = (
            ": other work shared the CPU, so every number is slower and noisier than alone"
            if cores > OTHER_WORK_NOTICED
            else ": the machine was otherwise idle"
        )
        return (
            f"Other work on the machine (CPU time outside this benchmark and its servers): "
            f"{cores:.2f} of {os.cpu_count()} cores on average during the run{verdict}."
        )

    @staticmethod
    def _reading() -> tuple[float, float, float]:
        total = psutil.cpu_times()
        busy = sum(
            getattr(total, field, 0.0) for field in ("user", "nice", "system", "irq", "softirq", "steal")
        )
        own = 0.0
        me = psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.Error:  # it ended between the listing and the reading
                continue
            own += times.user + times.system + times.children_user + times.children_system
        return time.monotonic(), busy, own


OTHER_WORK_NOTICED = 0.1  # cores: below this, timer noise and system daemons
