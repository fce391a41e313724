"""training.machine.OtherWork tells a benchmark's own CPU time from other work's, which the
load average cannot: the benches' notes about a shared machine rest on it."""

from __future__ import annotations

import subprocess
import sys
import time

from training.machine import OtherWork

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"


def test_a_child_of_the_benchmark_counts_as_its_own_work():
    other = OtherWork()
    subprocess.run([sys.executable, "-c", BURN.format(seconds=1.0)], check=True)
    wall, busy, own = other.since_start()
    assert own >= 0.9  # the child's CPU second is the benchmark's, not other work's
    assert busy >= own - 0.1 and wall > 0


def test_a_process_outside_the_benchmark_counts_as_other_work(tmp_path):
    # The shell exits at once, so the burning process is nobody's child here: other work.
    done = tmp_path / "done"
    script = BURN.format(seconds=1.0) + f"open({str(done)!r}, 'w').close()\n"
    other = OtherWork()
    subprocess.run(["sh", "-c", f'"{sys.executable}" -c "$0" &', script], check=True)
    deadline = time.monotonic() + 60
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert done.exists()
    wall, busy, own = other.since_start()
    assert own < 0.3 and busy >= 0.9  # its second is in the machine's busy time, not in ours
    assert other.cores() > 0.1 and "other work shared the CPU" in other.note()
