"""The body of `python -m ablations.run`: data, cached features, the search, the report.

In KerasTuner's chief/worker mode (ablations/distributed.py) the chief loads the data for the
report only and serves the oracle; each worker loads and encodes the data itself and runs
trials; the chief writes the report once every trial has ended.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import shutil
import time
from pathlib import Path

import keras
import keras_tuner

from ablations import distributed, index, oracles, report, search, studies
from ablations.request import StudyRequest
from data import folders, splits
from training import features, folds, provenance
from training.errors import UserFacingError
from training.machine import describe as describe_machine
from training.machine import process_memory_gib
from training.sources import SEED, load_encoder, scan_samples
from zoo import unet
from zoo.saving import versions


def run_study(request: StudyRequest) -> None:
    started = time.time()
    role = distributed.role()
    study, budget = studies.STUDIES[request.study], studies.BUDGETS[request.budget]
    seeds = request.seeds or budget.default_seeds
    study_dir = study_folder(request.out, study.name, request.only)
    keras.utils.set_random_seed(SEED)
    encoder = load_encoder(request.weights)
    split, arrays, source = load_data(
        budget, request.data, request.test_area, request.val_area, cv=request.cv
    )
    binding = study_binding(request, budget, split, source)
    provenance.check_binding(
        study_dir,
        binding,
        fresh=request.fresh,  # before anything is written
        absent_means={"halving": None, "output_stride": None},
    )
    if request.fresh and study_dir.exists():  # only once weights and data are known good
        shutil.rmtree(study_dir)
    if role != "worker":
        provenance.write_binding(study_dir, binding)
    if role == "chief":  # runs no trials: nothing to encode
        shared = search.TrialData(encoder, _chief_trains_nothing, None, None, budget)
    else:
        shared = shared_trial_data(encoder, arrays, budget, split if request.cv == "areas" else None)
    base = studies.base_decoder(study, request.out)
    if request.output_stride is not None:
        base = dataclasses.replace(base, output_stride=request.output_stride)
    hypermodel = search.StudyHyperModel(study, base, seeds, shared, only=request.only)
    hp = keras_tuner.HyperParameters()
    hypermodel.declare(hp)
    planned = oracles.planned_trials(study, hp, budget, seeds, request.halving)
    earlier_runs = report.earlier_runs(study_dir)  # a resumed study keeps what each run cost
    context = run_context(request, study, budget, seeds, split, source, base, planned)
    if role != "worker":  # the chief's context stands for the whole distributed run
        report.write_context(study_dir, context)
    tuner = search.RecordingTuner(
        oracles.make_oracle(study, hp, planned, SEED, request.halving),
        hypermodel=hypermodel,
        directory=str(study_dir),
        project_name="tuner",
        overwrite=False,
        trials_dir=study_dir / "trials",
        planned=planned,
        progress=_progress(role),
        waits=bool(request.halving),
    )
    print(f"{study.name}: {planned} trials, budget {budget.name}, base decoder {base.name}")
    if role == "worker":
        run_worker(tuner, started)
        return
    if role == "chief":
        serve_oracle(tuner)
        context["machine"] = f"chief: {context['machine']}; " + distributed.describe_workers(
            report.load_records(study_dir)
        )
        report.write_context(study_dir, context)
    else:
        tuner.search()
    context["runs"] = earlier_runs + [{**run_cost(started), "trials_run": tuner.done_this_run}]
    report.write_context(study_dir, context)
    best = report.write_all(study_dir, context, encoder, arrays["test"])
    index.write_index(request.out)
    print(
        f"done in {(time.time() - started) / 60:.1f} min; selected {best['variant']} "
        f"(trial {best['trial_id']}); see {study_dir / 'table.md'}"
    )


def run_cost(started: float) -> dict:
    """Wall time and peak memory of this invocation (a resumed run counts only its own part)."""
    return {
        "wall_minutes": round((time.time() - started) / 60, 1),
        "peak_rss_gib": round(process_memory_gib()[1], 2),
    }


def serve_oracle(tuner) -> None:
    if distributed.search_finished(tuner.oracle):
        print("[chief] every trial has already ended; writing the report", flush=True)
        return
    distributed.announce_assignments(tuner.oracle, _progress("chief"))
    print(
        f"[chief] serving the oracle on {distributed.address()}; this process runs no trials. "
        "Start workers with --worker ID --oracle HOST:PORT",
        flush=True,
    )
    tuner.search()  # KerasTuner's chief: returns once every trial ended and every worker stopped


def run_worker(tuner, started: float) -> None:
    tuner.progress(f"asking the oracle at {distributed.address()} for trials")
    tuner.search()
    tuner.progress(
        f"no trials left: ran {tuner.done_this_run} here in "
        f"{(time.time() - started) / 60:.1f} min; the chief writes the report"
    )


def _progress(role: str):
    if role == "single":
        return print
    prefix = f"[worker {distributed.tuner_id()}]" if role == "worker" else "[chief]"
    return lambda message: print(message if message.startswith(prefix) else f"{prefix} {message}", flush=True)


def _chief_trains_nothing(augmentation: str):
    raise RuntimeError("the chief serves the oracle and runs no trials")


def study_binding(request: StudyRequest, budget, split, source: str) -> dict:
    """What a study folder is bound to: a run with anything different refuses to write there."""
    return {
        "data_kind": provenance.data_kind(source),
        "data_fingerprint": provenance.data_fingerprint(split.train + split.val + split.test),
        "budget": budget.name,
        "split": split.description,
        "cv": request.cv,
        "halving": request.halving,
        "output_stride": request.output_stride,
        "weights": request.weights,
    }


def load_data(
    budget,
    data: Path | None = None,
    test_area: str | None = None,
    val_area: str | None = None,
    cv: str = "none",
):
    """Scan, check and split the data (None: synthetic scenes), then load each split as arrays.

    With cv="areas" the train split is every non-test tile (the folds' pool) and val is empty:
    each fold validates on one of the pool's areas."""
    samples, root, source = scan_samples(budget, data)
    try:
        split = splits.split_samples(samples, test_area=test_area, seed=SEED, val_area=val_area)
        if cv == "areas":
            split = pool_for_folds(split)
        arrays = {
            name: folders.load_arrays(getattr(split, name), budget.size) for name in ("train", "val", "test")
        }
    except folders.DataError as error:
        raise UserFacingError(str(error)) from error
    for name, (images, _) in arrays.items():
        if len(images) == 0 and not (cv == "areas" and name == "val"):
            raise UserFacingError(f"the {name} split of {root} is empty: {split.description}")
    print(f"data: {source}; {split.description}; counts {split.counts()}")
    return split, arrays, source


def pool_for_folds(split: splits.Split) -> splits.Split:
    """The split for cross-validation by area: train and val merged into one pool."""
    pool = split.train + split.val
    try:
        area_folds = folds.area_folds([s.area for s in pool])
    except folders.DataError as error:
        raise UserFacingError(f"--cv areas: {error}") from error
    test_text = split.description.split(";")[0]
    held_out = ", ".join(f.val_area for f in area_folds)
    return splits.Split(
        pool,
        [],
        split.test,
        f"{test_text}; cross-validation by area over the other "
        f"{len(pool)} tiles: each of {held_out} held out in turn, trained on the rest",
    )


def shared_trial_data(encoder, arrays, budget, cv_split: splits.Split | None = None) -> search.TrialData:
    model = unet.build(studies.DEFAULT_DECODER, encoder=encoder)  # carries the preprocessing
    print("encoding validation and test tiles once for every trial ...")
    val = (
        None if cv_split else features.encode(model, *arrays["val"], copies=1, augmentation="none", seed=SEED)
    )
    test = features.encode(model, *arrays["test"], copies=1, augmentation="none", seed=SEED)
    cache = {}

    def train_features(augmentation: str):
        # One augmentation's features at a time: studies visit them in grid order.
        if augmentation not in cache:
            cache.clear()
            gc.collect()  # free the previous augmentation's features before encoding the next
            copies = 1 if augmentation == "none" else budget.augmented_copies
            print(f"encoding training tiles: {copies} copies with '{augmentation}' augmentation ...")
            cache[augmentation] = features.encode(
                model, *arrays["train"], copies=copies, augmentation=augmentation, seed=SEED
            )
        return cache[augmentation]

    area_folds = folds.area_folds([s.area for s in cv_split.train]) if cv_split else None
    return search.TrialData(encoder, train_features, val, test, budget, folds=area_folds)


def study_folder(out: Path, study: str, only: dict | None) -> Path:
    """OUT/STUDY, or OUT/STUDY-NAME-V1-V2 when --only restricts it: a subset keeps its own
    search state and records, and never mixes with the full study's."""
    suffix = "".join(f"-{name}-{'-'.join(values)}" for name, values in sorted((only or {}).items()))
    return Path(out) / f"{study}{suffix}"


def run_context(request: StudyRequest, study, budget, seeds, split, source, base, planned) -> dict:
    return {
        "study": study.name,
        "summary": study.summary,
        "budget": budget.name,
        "budget_detail": {
            "size": budget.size,
            "max_images": budget.max_images,
            "epochs": budget.epochs,
            "augmented_copies": budget.augmented_copies,
        },
        "seeds": seeds,
        "planned_trials": planned,
        "search": study.search,
        "data": source,
        "split": split.description,
        "counts": split.counts(),
        "base_decoder": base.to_dict(),
        "objective": f"{studies.OBJECTIVE} (max)",
        "weights": request.weights,
        "cv": request.cv,
        "halving": request.halving,
        "machine": describe_machine(),
        "versions": versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m ablations.run " + " ".join(request.argv()),
    }
