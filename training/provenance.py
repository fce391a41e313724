"""What made a results folder, and the refusal to mix it with anything else.

A folder's `binding.json` names the data (its path and a fingerprint of its file list and
index), the budget, the split and cross-validation settings and the encoder weights. A run
into a folder bound to something different refuses before it writes anything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from training.errors import UserFacingError
from zoo.files import write_json_atomic

BINDING = "binding.json"


def data_fingerprint(samples: Sequence) -> str:
    """sha256 over every pair's name, area, zoom and file sizes: changes when a tile is
    added, removed, replaced or moved to another area."""
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda s: s.name):
        digest.update(
            f"{sample.name}|{sample.area}|{sample.zoom}|{_size(sample.image_path)}|"
            f"{_size(sample.mask_path)}\n".encode()
        )
    return digest.hexdigest()[:16]


def _size(path) -> int:
    return Path(path).stat().st_size


def check_binding(folder: Path, binding: dict, fresh: bool, absent_means: dict | None = None) -> None:
    """Refuse, in one sentence, when `folder` was made by a different run. `fresh` means the
    caller will empty the folder, so any earlier binding no longer matters. `absent_means`:
    what a key newer than the recorded binding meant before it existed (a folder made before
    `halving` existed was not halved)."""
    recorded = recorded_binding(Path(folder))
    if fresh or recorded is None:
        return
    recorded = {**(absent_means or {}), **recorded}
    # Only what both name is compared: a binding recorded before a key existed says nothing
    # about it, and a key a run no longer binds (the fit reads the curve's own length) is free.
    differences = [
        f"{key} {recorded[key]!r} -> {binding[key]!r}"
        for key in sorted(set(recorded) & set(binding))
        if recorded[key] != binding[key]
    ]
    if differences:
        raise UserFacingError(
            f"{folder} holds results of a different run ({'; '.join(differences)}); nothing was "
            "written. Use --fresh to replace them or --out to write elsewhere."
        )


def recorded_binding(folder: Path) -> dict | None:
    """The folder's binding, or for a study recorded before bindings existed, what its
    context.json says of the same things (data kind, budget, split, weights, no CV)."""
    if (folder / BINDING).is_file():
        return json.loads((folder / BINDING).read_text())
    if not (folder / "context.json").is_file():
        return None
    context = json.loads((folder / "context.json").read_text())
    return {
        "data_kind": data_kind(context["data"]),
        "budget": context["budget"],
        "split": context["split"],
        "weights": context["weights"],
        "cv": "none",
    }


def data_kind(source: str) -> str:
    return "synthetic" if str(source).startswith("SYNTHETIC") else "folder"


def write_binding(folder: Path, binding: dict) -> None:
    write_json_atomic(Path(folder) / BINDING, binding)
