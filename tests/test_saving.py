"""A save killed at any instant leaves the old model and metadata or the new ones, never a
mismatched pair, and the next save deletes what it left (`zoo.saving`).

A kill is simulated in this process: the save is stopped by an exception at one of its
renames (or inside the model's own write), with file deletion switched off meanwhile, so
the `finally` blocks that a real SIGKILL would never run leave the files as they were.
"""

from __future__ import annotations

import contextlib
import os
import pathlib

import keras
import numpy as np
import pytest

from zoo import saving

RENAMES_PER_SAVE = 3  # model to pending, metadata into place (the commit), pending to model


class Killed(BaseException):
    """Not an Exception: nothing in the save may catch it, as nothing catches a SIGKILL."""


def tiny_model(value: float) -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.layers[0].kernel.assign(np.full((4, 2), value, "float32"))
    return model


def save_tagged(path, value: float):
    return saving.save(tiny_model(value), path, {"threshold": 0.5, "tag": value})


def loaded_tag(path) -> float:
    """The tag of the pair `saving.load` accepts, after checking the weights are that model's."""
    model, metadata = saving.load(path)
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel)
    assert np.all(kernel == metadata["tag"]), "the metadata describes another model"
    return metadata["tag"]


@contextlib.contextmanager
def killed(monkeypatch, at_rename: int | None = None, in_model_save: bool = False):
    """Stop the save in this block at its `at_rename`-th rename (1-based, before it happens)
    or halfway through writing the model file."""
    real_replace, renames = os.replace, []

    def replace(source, target):
        renames.append((source, target))
        if len(renames) == at_rename:
            raise Killed
        real_replace(source, target)

    def half_written(model, filepath, *args, **kwargs):
        pathlib.Path(filepath).write_bytes(b"PK\x03\x04 half a zip")
        raise Killed

    with monkeypatch.context() as patched:
        patched.setattr(os, "replace", replace)
        patched.setattr(pathlib.Path, "unlink", lambda self, missing_ok=False: None)
        if in_model_save:
            patched.setattr(keras.Model, "save", half_written)
        with pytest.raises(Killed):
            yield


KILLS = [{"in_model_save": True}, *({"at_rename": n} for n in range(1, RENAMES_PER_SAVE + 1))]


@pytest.mark.parametrize("kill", KILLS, ids=lambda kill: "_".join(f"{k}-{v}" for k, v in kill.items()))
def test_a_save_killed_at_any_step_leaves_the_old_pair_or_the_new(kill, tmp_path, monkeypatch):
    path = save_tagged(tmp_path / "model.keras", 1.0)
    with killed(monkeypatch, **kill):
        save_tagged(path, 2.0)
    assert loaded_tag(path) in (1.0, 2.0)
    # Committed (the metadata replaced) means the new pair, whoever reads it next.
    committed = kill.get("at_rename", 0) > 2
    assert loaded_tag(path) == (2.0 if committed else 1.0)

    save_tagged(path, 3.0)
    assert sorted(item.name for item in tmp_path.iterdir()) == ["model.json", "model.keras"]
    assert loaded_tag(path) == 3.0


def test_the_renames_counted_are_all_a_save_does(tmp_path, monkeypatch):
    path = save_tagged(tmp_path / "model.keras", 1.0)
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append(b), real_replace(a, b)))
    save_tagged(path, 2.0)
    assert len(renames) == RENAMES_PER_SAVE
    assert pathlib.Path(renames[1]).name == "model.json"  # the commit is the middle one


def test_a_first_save_killed_after_its_commit_still_loads(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    with killed(monkeypatch, at_rename=3):
        save_tagged(path, 2.0)
    assert not path.exists()
    assert loaded_tag(path) == 2.0 and path.is_file()
    assert not saving.pending_path(path).exists()


def test_a_committed_pending_model_is_read_where_it_is_in_a_read_only_folder(tmp_path, monkeypatch):
    path = save_tagged(tmp_path / "model.keras", 1.0)
    with killed(monkeypatch, at_rename=3):
        save_tagged(path, 2.0)

    def refuse(source, target):
        raise PermissionError(f"read-only: {target}")

    monkeypatch.setattr(os, "replace", refuse)
    assert loaded_tag(path) == 2.0
    assert saving.pending_path(path).is_file()  # left for a writer to finish


def test_leftovers_of_other_models_in_the_folder_are_kept(tmp_path):
    other = tmp_path / ".other.keras.abc123.keras"
    other.write_bytes(b"someone else's")
    save_tagged(tmp_path / "model.keras", 1.0)
    assert other.exists()
