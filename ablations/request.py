"""StudyRequest: what `python -m ablations.run` was asked to do, parsed and frozen.

The CLI builds one from argv; the pipeline reads it and never sees an argparse Namespace.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class StudyRequest:
    study: str
    data: Path | None = None  # None: synthetic scenes
    budget: str = "standard"
    out: Path = Path("results")
    seeds: int | None = None  # None: the budget's default
    only: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # --only NAME=V1,V2
    fresh: bool = False
    test_area: str | None = None
    val_area: str | None = None
    cv: str = "none"  # "areas": each non-test area held out in turn (training.folds)
    halving: int | None = None  # successive halving: configurations kept after the first rung
    output_stride: int | None = None  # the base decoder's finest level; None: the study's own
    weights: str = "imagenet"
    chief: bool = False
    worker: str | None = None
    oracle: str | None = None  # HOST:PORT

    def argv(self) -> list[str]:
        """The arguments of `python -m ablations.run` that make this request (defaults left out)."""
        parts = [self.study, "--budget", self.budget]
        if self.data:
            parts += ["--data", str(self.data)]
        if self.seeds:
            parts += ["--seeds", str(self.seeds)]
        for name, values in self.only.items():
            parts += ["--only", f"{name}={','.join(values)}"]
        if self.test_area:
            parts += ["--test-area", self.test_area]
        if self.val_area:
            parts += ["--val-area", self.val_area]
        if self.cv != "none":
            parts += ["--cv", self.cv]
        if self.halving:
            parts += ["--halving", str(self.halving)]
        if self.output_stride is not None:
            parts += ["--output-stride", str(self.output_stride)]
        if Path(self.out) != Path("results"):
            parts += ["--out", str(self.out)]
        if self.weights != "imagenet":
            parts += ["--weights", self.weights]
        if self.chief:
            parts += ["--chief", "--oracle", self.oracle]
        return parts
