"""The searches' oracles: which trial runs next (grid, successive halving, Bayesian), saved
atomically so a killed search resumes from its last whole state."""

from __future__ import annotations

import itertools
import json
import os

import keras_tuner
import numpy as np

from ablations.studies import OBJECTIVE, Study, configuration_of
from zoo.files import write_text_atomic


class AtomicSaves:
    """An oracle that writes its state and its trials' files whole or not at all.

    KerasTuner opens the file and writes in place, so a kill -9 during a save leaves an empty
    or cut `oracle.json` (or `trial.json`), and the next run cannot reload the search (seen as
    a JSONDecodeError on resume). Written atomically, a kill leaves the previous state, which
    the reload and requeue_orphaned_trials already know how to resume from."""

    def save(self):
        save_state_atomically(self, self._get_oracle_fname())

    def _save_trial(self, trial):
        save_state_atomically(trial, os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"))


def save_state_atomically(stateful, path: str) -> None:
    """KerasTuner's Stateful.save (the state as JSON), written whole or not at all."""
    write_text_atomic(path, json.dumps(stateful.get_state()))


class BayesianOracle(AtomicSaves, keras_tuner.oracles.BayesianOptimizationOracle):
    """KerasTuner's Bayesian optimisation, saved atomically."""


def make_oracle(study: Study, hp, planned: int, seed: int, halving_keep: int | None = None):
    objective = keras_tuner.Objective(OBJECTIVE, direction="max")
    common = dict(
        objective=objective,
        hyperparameters=hp,
        seed=seed,
        tune_new_entries=False,
        max_consecutive_failed_trials=1,
        allow_new_entries=False,
    )
    if study.search == "bayesian":
        return BayesianOracle(max_trials=planned, **common)
    if halving_keep:
        return HalvingOracle(halving_keep, max_trials=planned, **common)
    return GridOracle(max_trials=planned, **common)


def planned_trials(study: Study, hp, budget, seeds: int, halving_keep: int | None = None) -> int:
    """Trials a search runs: the grid (or the Bayesian budget), plus each survivor's second
    rung under successive halving."""
    if study.search != "grid":
        return budget.search_trials * seeds
    grid = grid_size(hp)
    return grid + min(halving_keep, grid // seeds) * seeds if halving_keep else grid


def requeue_orphaned_trials(oracle) -> list[str]:
    """Send trials a crash left half-registered back to run, under their own ids.

    KerasTuner saves a new trial's file before the oracle's state. A kill between the two
    leaves a RUNNING trial that the reloaded oracle neither retries (it is not among the
    saved ongoing trials) nor counts as tried; its values would then run under a new id and
    the last combination of the grid would never run. Only the oracle's own process (a
    single run or the chief) holds these fields; a worker's oracle client does not.
    """
    if not hasattr(oracle, "_retry_queue"):
        return []
    queued = set(oracle._retry_queue) | {t.trial_id for t in oracle.ongoing_trials.values()}
    orphans = [
        trial
        for trial_id, trial in sorted(oracle.trials.items())
        if trial.status == keras_tuner.engine.trial.TrialStatus.RUNNING and trial_id not in queued
    ]
    for trial in orphans:
        oracle._record_values(trial)  # so the grid does not hand its values out again
        oracle._retry_queue.append(trial.trial_id)
    return [trial.trial_id for trial in orphans]


class GridOracle(AtomicSaves, keras_tuner.Oracle):
    """KerasTuner's grid in GridSearch's order, each untried combination to whoever asks.

    GridSearchOracle derives a combination from the trial before it once that one has ended,
    so parallel workers mostly wait (busy-polling IDLE answers). Here the oracle's own saved
    record of tried values decides, so a resumed search also fills exactly the gaps.
    """

    def populate_space(self, trial_id):
        for values in grid_values(self.get_space()):
            if not self._duplicate(values):
                return {"status": keras_tuner.engine.trial.TrialStatus.RUNNING, "values": values}
        return {"status": keras_tuner.engine.trial.TrialStatus.STOPPED, "values": None}


# Successive halving over epochs (`--halving KEEP`, with --cv areas): every configuration
# trains its folds for FIRST_RUNG_EPOCHS epochs of its full cosine schedule; the KEEP with the
# best mean validation building IoU then continue from their saved fold states to the
# budget's epochs, as if never stopped. The rest are cut. A trial's rung and, for the second
# rung, the trial it continues travel as extra hyperparameter values (KerasTuner's Hyperband
# passes its `tuner/epochs` the same way), so the oracle's saved state holds the whole plan.
RUNG, PARENT = "tuner/rung", "tuner/parent"
FIRST_RUNG_EPOCHS = 1


def rung_of(values: dict) -> int | None:
    return values.get(RUNG)


class HalvingOracle(GridOracle):
    """The grid at the first rung; once every first-rung trial has ended, the `keep` best
    configurations (mean over seeds) at the second. Whoever asks while another process
    still runs a first-rung trial waits (IDLE), since the cut needs every score."""

    def __init__(self, keep: int, **kwargs):
        super().__init__(**kwargs)
        self.keep = keep

    def populate_space(self, trial_id):
        for values in grid_values(self.get_space()):
            first = {**values, RUNG: 0}
            if not self._duplicate(first):
                return {"status": keras_tuner.engine.trial.TrialStatus.RUNNING, "values": first}
        first_rung = [t for t in self.trials.values() if rung_of(t.hyperparameters.values) == 0]
        if any(t.status == keras_tuner.engine.trial.TrialStatus.RUNNING for t in first_rung):
            return {"status": keras_tuner.engine.trial.TrialStatus.IDLE, "values": None}
        for trial in survivors(first_rung, self.keep):
            second = {**trial.hyperparameters.values, RUNG: 1, PARENT: trial.trial_id}
            if not self._duplicate(second):
                return {"status": keras_tuner.engine.trial.TrialStatus.RUNNING, "values": second}
        return {"status": keras_tuner.engine.trial.TrialStatus.STOPPED, "values": None}


def survivors(first_rung: list, keep: int) -> list:
    """The first-rung trials of the `keep` configurations with the best mean score over
    their seeds (a failed trial scores nothing; ties go to the earlier trial)."""
    scored = [t for t in first_rung if t.score is not None]
    by_configuration: dict[str, list] = {}
    for trial in sorted(scored, key=lambda t: t.trial_id):
        by_configuration.setdefault(configuration_of(trial.hyperparameters.values), []).append(trial)
    ranked = sorted(by_configuration.values(), key=lambda trials: -np.mean([t.score for t in trials]))
    return [trial for trials in ranked[:keep] for trial in trials]


def grid_values(hp: keras_tuner.HyperParameters):
    """Every combination in GridSearch's order: each default first, the last name fastest."""
    names = [parameter.name for parameter in hp.space]
    axes = [[p.default] + [v for v in p.values if v != p.default] for p in hp.space]
    for combination in itertools.product(*axes):
        yield dict(zip(names, combination))


def grid_size(hp: keras_tuner.HyperParameters) -> int:
    size = 1
    for parameter in hp.space:
        size *= len(parameter.values)
    return size
