"""Reading what the transfer harness's folds recorded (ablations.evaluate.transfer.FOLD_RECORDS)
for the reports built on it (zooms, adaptive), and writing such a report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ablations.errors import UserFacingError, exit_status
from zoo.files import write_text_atomic


def read_curve(path: Path, kind: str, needs: tuple[str, ...] = (), rerun_with: str = "") -> dict:
    """The curve at `path`, refused by name unless every fold recorded `kind` (for the options `needs`)."""
    if not path.is_file():
        raise UserFacingError(f"{path}: no such curve")
    curve = json.loads(path.read_text())
    recorded = curve.get(kind) or {}
    incomplete = any(counts is None for option in recorded.values() for counts in option.values())
    if not recorded or incomplete or any(name not in recorded for name in needs):
        wanted = f" of {', '.join(needs)}" if needs else ""
        raise UserFacingError(f"{path} has no '{kind}'{wanted} for every fold: rerun its variant with "
                              f"python -m ablations.evaluate.transfer {rerun_with}into a new --out")
    return curve


def write_report(out: Path, make: Callable[[], str]) -> int:
    """Write what `make` returns to `out` atomically; a UserFacingError is said, exit status 2."""
    def write() -> None:
        write_text_atomic(out, make())
        print(f"wrote {out}")

    return exit_status(write)
