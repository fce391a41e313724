"""KerasTuner glue: a HyperModel per study and a Tuner that records every finished trial.

Each trial's record (config, recipe, seed, every score, curves) is written atomically to
`trials/<trial_id>.json` together with the decoder's weights, before the tuner marks the
trial finished. On a restart the tuner reloads its oracle (finished trials are never
re-run), and a trial the oracle still lists as unfinished is skipped if its record exists.
The same holds for KerasTuner's chief/worker mode (ablations/distributed.py): workers write
the records, and a restarted worker is handed back its unfinished trial by the chief.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from pathlib import Path

import keras
import keras_tuner
import numpy as np

from ablations import trials
from ablations.oracles import (
    FIRST_RUNG_EPOCHS,
    PARENT,
    requeue_orphaned_trials,
    rung_of,
    save_state_atomically,
)
from ablations.studies import OBJECTIVE, Study
from training import train
from training.errors import UserFacingError
from training.machine import describe as describe_machine
from training.machine import process_memory_gib
from training.train import EpochProgress
from zoo import unet
from zoo.files import atomic_path, write_json_atomic


@dataclasses.dataclass
class TrialData:
    """What every trial of a study shares: cached features and the budget's numbers."""

    encoder: keras.Model
    train_features: callable  # augmentation name -> FeatureSet (cached by the caller)
    val: object
    test: object
    budget: object  # studies.Budget: epochs, size, eager, latency_repeats
    folds: list | None = None  # training.folds.Fold list under --cv areas; train_features is then the pool


class RestrictedChoices:
    """The hyperparameters a study declares, with the Choice lists that `--only` names cut
    to the values it names (compared as text: `--only width=0.5`)."""

    def __init__(self, hp: keras_tuner.HyperParameters, only: dict[str, list[str]]):
        self.hp, self.only, self.declared = hp, only, []

    def Choice(self, name, values, **kwargs):
        self.declared.append(name)
        if name in self.only:
            unknown = [v for v in self.only[name] if v not in {str(c) for c in values}]
            if unknown:
                raise UserFacingError(
                    f"--only {name}: {', '.join(unknown)} is not one of its "
                    f"values ({', '.join(map(str, values))})"
                )
            values = [v for v in values if str(v) in self.only[name]]
        return self.hp.Choice(name, values, **kwargs)

    def __getattr__(self, attribute):  # Float, Int, Boolean, ... unchanged
        return getattr(self.hp, attribute)

    def check_every_name_was_declared(self, study: str) -> None:
        missing = [name for name in self.only if name not in self.declared]
        if missing:
            raise UserFacingError(
                f"--only {', '.join(missing)}: study {study!r} has no such choice "
                f"(its choices: {', '.join(self.declared)})"
            )


class StudyHyperModel(keras_tuner.HyperModel):
    """build(hp) maps hyperparameters onto a DecoderConfig and builds it with zoo."""

    def __init__(self, study: Study, base_decoder, seeds: int, shared: TrialData, only=None):
        super().__init__(name=study.name)
        self.study, self.base_decoder, self.seeds, self.shared = study, base_decoder, seeds, shared
        self.only = only or {}

    def declare(self, hp: keras_tuner.HyperParameters) -> None:
        restricted = RestrictedChoices(hp, self.only)
        self.study.space(restricted, self.base_decoder, self.seeds)
        restricted.check_every_name_was_declared(self.study.name)

    def trial_setup(self, hp):
        return self.study.to_trial(hp.values, self.base_decoder)

    def build(self, hp):
        config, _ = self.trial_setup(hp)
        # The decoder's initial weights come from the trial's own seed, not from whatever the
        # process drew before: otherwise a trial's result depends on its place in the search
        # (first after a start or a resume, or after a trial with another seed).
        keras.utils.set_random_seed(int(hp.values.get("seed", 0)))
        return unet.build(config, encoder=self.shared.encoder)

    def fit(self, hp, model, callbacks=(), resume=None, **kwargs):
        """`resume`: a surviving configuration's fold states from its first rung (successive halving)."""
        _, recipe = self.trial_setup(hp)
        features = self.shared.train_features(recipe.augmentation)
        seed = int(hp.values.get("seed", 0))
        if self.shared.folds:
            # The whole schedule, unless successive halving stops it after its first rung
            # (rung 0) or continues it from there (rung 1).
            epochs, rung = self.shared.budget.epochs, rung_of(hp.values)
            return trials.run_cv_trial(
                model,
                lambda: self.build(hp),
                recipe,
                features,
                self.shared.folds,
                self.shared.test,
                FIRST_RUNG_EPOCHS if rung == 0 else epochs,
                seed,
                eager=self.shared.budget.eager,
                callbacks=callbacks,
                schedule_epochs=epochs,
                initial_epoch=FIRST_RUNG_EPOCHS if rung == 1 else 0,
                resume=resume,
            )
        return train.run_trial(
            model,
            recipe,
            features,
            self.shared.val,
            self.shared.test,
            self.shared.budget.epochs,
            seed=int(hp.values.get("seed", 0)),
            eager=self.shared.budget.eager,
            callbacks=callbacks,
        )


class RecordingTuner(keras_tuner.Tuner):
    def __init__(self, *args, trials_dir: Path, planned: int, progress=print, waits: bool = False, **kwargs):
        super().__init__(*args, **kwargs)  # reloads the oracle when the project exists
        self.waits = waits  # successive halving: a worker may be told to wait (IDLE) for the cut
        self.latencies: dict[str, float] = {}
        requeue_orphaned_trials(self.oracle)
        self.trials_dir, self.planned, self.progress = Path(trials_dir), planned, progress
        self.started = time.time()
        self.done_this_run = 0

    def run_trial(self, trial, *args, **kwargs):
        record_file = self.trials_dir / f"{trial.trial_id}.json"
        weights_file = self.trials_dir / f"{trial.trial_id}.weights.h5"
        if record_file.is_file() and weights_file.is_file():  # finished before a crash
            record = json.loads(record_file.read_text())
            self.progress(f"trial {trial.trial_id}: already recorded, not re-run")
            return {OBJECTIVE: record["metrics"][OBJECTIVE]}
        if record_file.is_file():  # a checkout carries records, never weights (.gitignore)
            self.progress(f"trial {trial.trial_id}: recorded but its weights are not here; running it again")
        hp = trial.hyperparameters
        config, recipe = self.hypermodel.trial_setup(hp)
        finished = len(list(self.trials_dir.glob("*.json")))
        self.progress(
            f"trial {trial.trial_id} ({finished} of {self.planned} recorded so far): "
            f"{config.name} {_short(hp.values)}{self._eta(finished)}"
        )
        model = self.hypermodel.build(hp)
        parent = hp.values.get(PARENT)
        resume = (
            None
            if parent is None
            else saved_fold_states(self.trials_dir, parent, len(self.hypermodel.shared.folds))
        )
        result = self.hypermodel.fit(hp, model, callbacks=[EpochProgress(self.progress)], resume=resume)
        self._record(trial, hp, config, recipe, model, result)
        self.done_this_run += 1
        now, peak = process_memory_gib()
        self.progress(f"trial {trial.trial_id} recorded; memory {now:.1f} GiB now, {peak:.1f} GiB peak")
        return {OBJECTIVE: result.metrics[OBJECTIVE]}

    def pre_create_trial(self):
        if self.waits:  # KerasTuner asks again at once after IDLE; don't flood the chief meanwhile
            time.sleep(0.5)

    def _record(self, trial, hp, config, recipe, model, result) -> None:
        self.trials_dir.mkdir(parents=True, exist_ok=True)
        # Weights and samples first, the JSON record last: a record exists only when
        # everything it points to is complete.
        with atomic_path(self.trials_dir / f"{trial.trial_id}.weights.h5", ".weights.h5") as tmp:
            unet.decoder_of(model).save_weights(tmp)
        with atomic_path(self.trials_dir / f"{trial.trial_id}.samples.npy", ".npy") as tmp:
            np.save(tmp, result.sample_masks)
        save_fold_states(self.trials_dir, trial.trial_id, result.fold_models)
        history, train_seconds = result.history, result.train_seconds
        parent = hp.values.get(PARENT)
        if parent is not None:  # the survivor's record covers its whole schedule, first rung included
            first = json.loads((self.trials_dir / f"{parent}.json").read_text())
            history = {key: first["history"].get(key, []) + values for key, values in history.items()}
            train_seconds += first["train_seconds"]
        record = {
            "trial_id": trial.trial_id,
            "hyperparameters": hp.values,
            "config": config.to_dict(),
            "variant": config.name,
            "recipe": recipe.to_dict(),
            "seed": int(hp.values.get("seed", 0)),
            "threshold": result.threshold,
            "metrics": result.metrics,
            "history": history,
            "train_seconds": train_seconds,
            "trainable_params": unet.trainable_params(model),
            "total_params": unet.total_params(model),
            "latency_ms": None if result.fold_models else self._latency_ms(config, model),
            "tuner_id": self.tuner_id,
            "host": socket.gethostname(),
            "machine": describe_machine(),
        }
        if rung_of(hp.values) is not None:
            record["halving"] = {
                "rung": rung_of(hp.values),
                "parent": parent,
                "epochs_trained": max(map(len, history.values()), default=0),
            }
        write_json_atomic(self.trials_dir / f"{trial.trial_id}.json", record)

    def _latency_ms(self, config, model) -> float:
        """Measured once per architecture in a process: latency belongs to the architecture, not
        the recipe or seed (the selection compares architectures' medians), and each measurement
        traces the whole model anew. A configuration cut after its first rung of successive
        halving is never a candidate, so it is not measured at all."""
        budget = self.hypermodel.shared.budget
        if config.name not in self.latencies:
            self.latencies[config.name] = train.latency_ms(model, budget.size, budget.latency_repeats)
        return self.latencies[config.name]

    def _eta(self, finished: int) -> str:
        if not self.done_this_run:
            return ""
        per_trial = (time.time() - self.started) / self.done_this_run
        return f" (about {per_trial * max(0, self.planned - finished) / 60:.0f} min left)"

    def _get_tuner_fname(self):
        # KerasTuner reloads the oracle only when this file exists. A single process and the
        # chief own the same oracle, so they share one file: either can resume the other.
        if self._is_worker():
            return super()._get_tuner_fname()
        return os.path.join(str(self.project_dir), "tuner0.json")

    def save(self):
        # KerasTuner's own save writes in place: a kill mid-write left an empty tuner file.
        if not self._is_worker():
            self.oracle.save()
        save_state_atomically(self, self._get_tuner_fname())

    # KerasTuner would otherwise pickle a model per trial; records hold what we need.
    def save_model(self, trial_id, model, step=0):
        pass

    def load_model(self, trial):
        raise NotImplementedError("trial models are rebuilt from trials/<id>.weights.h5")


class MissingFoldState(UserFacingError, keras_tuner.errors.FatalError):
    """Fatal to the search (KerasTuner would otherwise record the survivor as failed and go
    on) and told in one sentence like any UserFacingError."""


def save_fold_states(trials_dir: Path, trial_id: str, fold_models: list) -> None:
    """Each fold's decoder weights and optimizer state, for a survivor to continue from."""
    for number, model in enumerate(fold_models):
        with atomic_path(trials_dir / f"{trial_id}.fold{number}.weights.h5", ".weights.h5") as tmp:
            unet.decoder_of(model).save_weights(tmp)
        with atomic_path(trials_dir / f"{trial_id}.fold{number}.optimizer.npz", ".npz") as tmp:
            np.savez(tmp, **train.optimizer_variables(model))


def saved_fold_states(trials_dir: Path, trial_id: str, fold_count: int) -> list[tuple[Path, dict]]:
    states = []
    for number in range(fold_count):
        weights = trials_dir / f"{trial_id}.fold{number}.weights.h5"
        optimizer = trials_dir / f"{trial_id}.fold{number}.optimizer.npz"
        if not (weights.is_file() and optimizer.is_file()):
            raise MissingFoldState(
                f"trial {trial_id}'s saved fold state ({weights.name}) is missing, so "
                "its second rung cannot continue it; rerun the study with --fresh"
            )
        with np.load(optimizer) as saved:
            states.append((weights, {key: saved[key] for key in saved.files}))
    return states


def _short(values: dict) -> str:
    return (
        "("
        + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        + ")"
    )
