"""The final fit: the selected recipe trained on every non-test area, for as long as
cross-validation by area says helps, then saved, reported and pointed at by results/MODEL.

Two stages, so the model that ships takes minutes, not hours:

1. The learning curve (`--curve`): one decoder per area fold (trained on the other areas) for
   `curve_epochs`, scored on its held-out area after every epoch at every threshold. The
   epoch count is the first epoch within 0.005 of the best mean held-out building IoU, the
   threshold that epoch's best. Written to OUT/curve.json, which the next fits reuse.
2. The fit: one decoder on every pool tile for the chosen epochs of the same cosine
   schedule (`schedule_epochs` = the curve's length), so the final model trains exactly as
   the folds did up to the chosen epoch.
"""
from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path

import numpy as np

from ablations import features, folds, heldout, plots_final, provenance, studies
from ablations.data import folders
from ablations.errors import UserFacingError
from ablations.machine import describe as describe_machine, process_memory_gib
from zoo import saving, unet
from zoo.config import DecoderConfig
from zoo.files import write_json_atomic, write_text_atomic

SEED = 0
# The recipe the cross-city studies selected (results/EXPERIMENTS.md, steps 10 and 11), with
# the head that cannot go dead (issue: a width-0.25 ReLU head left a constant floor).
SELECTED_DECODER = DecoderConfig(upsampler="nearest", skip="attention", conv="double", width=0.25)
SELECTED_RECIPE = studies.Recipe(augmentation="sensor")


@dataclasses.dataclass(frozen=True)
class FitRequest:
    data: Path | None = None          # None: synthetic scenes (a smoke test, not a model)
    test_area: str | None = "none"    # "none": every area trains (the model that ships)
    out: Path = Path("results/final")
    budget: str = "standard"
    weights: str = "imagenet"
    curve: bool = False               # run the cross-validated learning curve first
    curve_epochs: int = 12
    epochs: int | None = None         # overrides the curve's choice
    recipe_from: Path | None = None   # a model.json whose config and recipe to fit
    # curve.json files (ablations.evaluate.transfer) of one recipe, under one seed or several,
    # to fit as chosen there (several: their counts pooled, see pooled_curve)
    curve_from: tuple[Path, ...] = ()
    point_served: bool = True         # write results/MODEL -> OUT/model.keras
    fresh: bool = False
    # Serve only options that run at most this many full-size passes of the network an image
    # (None: any): the latency budget of a request (ablations.heldout.passes_of).
    max_passes: float | None = heldout.SERVED_MAX_PASSES

    @property
    def results_root(self) -> Path:
        return Path(self.out).parent


def run_fit(request: FitRequest) -> dict:
    started = time.time()
    budget = studies.BUDGETS[request.budget]
    _require_a_curve(request)  # before minutes of loading and encoding, not after
    config, recipe = selected_recipe(request.recipe_from, _first(request.curve_from) or _kept_curve(request))
    pool_samples, test_samples, source = load_samples(request, budget)
    binding = {"data_kind": provenance.data_kind(source),
               "data_fingerprint": provenance.data_fingerprint(pool_samples + test_samples),
               "budget": budget.name, "test_area": request.test_area, "weights": request.weights,
               "config": config.to_dict(), "recipe": recipe.to_dict()}
    provenance.check_binding(request.out, binding,
                             fresh=request.fresh or request.curve or bool(request.curve_from))
    encoder = _encoder(request.weights, config.taps)
    pool = encode_pool(encoder, pool_samples, budget, recipe, config)
    curve = learning_curve(request, config, recipe, encoder, pool, pool_samples, budget)
    provenance.write_binding(request.out, binding)
    _, served = heldout.best_option(curve, request.max_passes)
    threshold, tta, scales = served["threshold"], served["tta"], served["scales"]
    epochs = request.epochs or served["epochs"]
    print(f"final fit: {config.name}, {recipe.augmentation} augmentation, {epochs} of "
          f"{curve['curve_epochs']} cosine epochs, threshold {threshold:.2f}, test-time views "
          f"'{tta}' at scales {scales}, {pool.count} tiles")
    model = _build(config, encoder)
    history, seconds = _train(model, recipe, pool, epochs, curve["curve_epochs"], budget,
                              [s.area for s in pool_samples])
    test = score_test(model, (threshold, tta, scales), test_samples, budget)
    metadata = final_metadata(request, config, recipe, epochs, (threshold, tta, scales), curve, history, seconds,
                              test, source, pool_samples, test_samples)
    path = saving.save(model, Path(request.out) / "model.keras", metadata)
    plots_final.samples(model, (threshold, tta, scales), pool, test_samples, budget.size, Path(request.out) / "samples.png")
    metadata["cost"] = {"wall_minutes": round((time.time() - started) / 60, 1),
                        "peak_rss_gib": round(process_memory_gib()[1], 2)}
    write_text_atomic(Path(request.out) / "README.md", report(request, metadata, curve))
    if request.point_served:
        point_served_model(request.results_root, path)
    print(f"done in {metadata['cost']['wall_minutes']} min; saved {path}; see {Path(request.out) / 'README.md'}")
    return metadata


def selected_recipe(recipe_from: Path | None, curve_from: Path | None = None) -> tuple[DecoderConfig, studies.Recipe]:
    source = curve_from or recipe_from
    if source is None:
        return SELECTED_DECODER, SELECTED_RECIPE
    import json

    fields = json.loads(Path(source).read_text())
    if "config" not in fields or "recipe" not in fields:
        raise UserFacingError(f"{source} names no config and recipe: pass a model.json to --recipe-from, "
                              "a variant's curve.json (results/transfer/NAME/) to --curve-from")
    config = {"head": "linear", **fields["config"]}  # a new fit always gets the live head
    return DecoderConfig.from_dict(config), studies.Recipe(**fields["recipe"])


def _kept_curve(request: FitRequest) -> Path | None:
    """OUT's curve.json when it names the recipe it was run with (a variant's, brought by
    --curve-from): refitting from it, or running its curve again (--curve), must fit that
    recipe, not the default one, which would silently change the served model."""
    import json

    path = Path(request.out) / "curve.json"
    if request.recipe_from or not path.is_file():
        return None
    return path if "config" in json.loads(path.read_text()) else None


def load_samples(request: FitRequest, budget):
    from ablations.pipeline import scan_samples

    samples, root, source = scan_samples(budget, request.data)
    areas = sorted({s.area for s in samples if s.area})
    if request.test_area not in (None, "none") and request.test_area not in areas:
        raise UserFacingError(f"--test-area {request.test_area!r} is not an area of {root}; "
                              f"known: {', '.join(areas) or 'none (no index.csv areas)'}, or 'none'")
    test = [s for s in samples if s.area == request.test_area]
    pool = [s for s in samples if s.area != request.test_area]
    print(f"data: {source}; pool {len(pool)} tiles ({', '.join(sorted({s.area or '?' for s in pool}))}); "
          f"test {len(test)} tiles ({request.test_area})")
    return pool, test, source


def _encoder(weights: str, taps: str = "narrow"):
    from ablations.pipeline import load_encoder

    return load_encoder(weights, taps)


def _build(config: DecoderConfig, encoder):
    import keras

    keras.utils.set_random_seed(SEED)  # every fold and the final model start from the same weights
    return unet.build(config, encoder=encoder)


def encode_pool(encoder, pool_samples, budget, recipe, config=SELECTED_DECODER) -> features.FeatureSet:
    from ablations.data import augment

    images, masks = folders.load_arrays(pool_samples, budget.size)
    # The config's own model: its preprocessing, taps and half-size pass decide what the
    # encoder sees (encoder_features reads no decoder weight).
    model = unet.build(config, encoder=encoder)
    print(f"encoding {len(images)} pool tiles once for every fold and the fit: "
          f"{recipe.copies(budget)} copies with '{recipe.augmentation}' augmentation ...")
    if recipe.augmentation not in augment.STYLE_AUGMENTATIONS:
        return features.encode(model, images, masks, copies=recipe.copies(budget),
                               augmentation=recipe.augmentation, seed=SEED)
    # Styles borrowed from the other cities of the pool; the curve (ablations.evaluate.transfer)
    # restyles per fold instead, so a held-out city's look never trained a fold.
    areas = np.asarray([s.area for s in pool_samples], dtype=object)
    restyled = augment.restyle(recipe.augmentation, images, masks, areas, np.arange(len(images)), SEED)
    return features.stack_copies(features.encode(model, images, masks, 1, "none", seed=SEED),
                                 features.encode(model, *restyled, 1, "none", seed=SEED))


def _train(model, recipe, pool, epochs: int, schedule_epochs: int, budget, areas):
    from ablations.search import EpochProgress
    from ablations.train import train_decoder

    return train_decoder(model, recipe, pool, epochs, SEED, callbacks=[EpochProgress()],
                         eager=budget.eager, schedule_epochs=schedule_epochs, areas=areas)


def learning_curve(request, config, recipe, encoder, pool, pool_samples, budget) -> dict:
    """Run the cross-validated curve (--curve), or read the one this folder already holds."""
    path = Path(request.out) / "curve.json"
    if request.curve_from:  # a variant's curve(s), run by ablations.evaluate.transfer
        curve = curve_from_files(request.curve_from)
        write_json_atomic(path, curve)
        plots_final.learning_curve(curve, Path(request.out) / "curve.png")
        return curve
    if not request.curve:  # run_fit checked that it exists before any work
        import json

        return json.loads(path.read_text())
    from ablations.search import EpochProgress

    areas = [s.area for s in pool_samples]
    started = time.time()
    results = folds.cross_validate(lambda: _build(config, encoder), recipe, pool, folds.area_folds(areas),
                                   request.curve_epochs, SEED, schedule_epochs=request.curve_epochs,
                                   eager=budget.eager, callbacks=[EpochProgress()], areas=areas)
    curve = curve_record(results, request.curve_epochs, time.time() - started)
    # Named like a variant's curve: a later plain fit in this folder refits this recipe
    # (_kept_curve), and a serving option's passes depend on the config (heldout.model_passes).
    curve.update(config=config.to_dict(), recipe=recipe.to_dict())
    write_json_atomic(path, curve)
    plots_final.learning_curve(curve, Path(request.out) / "curve.png")
    return curve


def _first(paths) -> Path | None:
    return paths[0] if paths else None


def curve_from_files(paths) -> dict:
    """The curve one file holds, or the pooled curve of several (one recipe, several seeds)."""
    import json

    curves = [json.loads(Path(path).read_text()) for path in paths]
    return curves[0] if len(curves) == 1 else pooled_curve(curves, [str(path) for path in paths])


# What must agree for curves to be pooled: the same recipe on the same data, scored alike.
POOLED_ALIKE = ("config", "recipe", "relabel", "curve_epochs", "thresholds", "fingerprint")


def pooled_curve(curves: list[dict], sources: list[str]) -> dict:
    """One learning curve from the same recipe's curves under several seeds: each held-out
    city's confusion counts (every epoch and threshold, and each view set's) summed over the seeds,
    then epochs, threshold and serving option chosen from the sums exactly as from one curve.

    Why: one seed's choice can be a lucky draw. The served recipe's seed 0 chose a threshold
    of 0.35 on the other cities; under seed 1 the same rule scored 0.09 lower on the held-out
    cities (results/EXPERIMENTS.md, step 19). Summed counts weigh every seed's pixels alike."""
    for field in POOLED_ALIKE:
        differing = [source for source, curve in zip(sources, curves) if curve.get(field) != curves[0].get(field)]
        if differing:
            raise UserFacingError(f"--curve-from: {', '.join(differing)} differ(s) from {sources[0]} in "
                                  f"'{field}'; only one recipe's curves under other seeds can be pooled")
    seeds = [curve.get("seed", SEED) for curve in curves]
    if len(set(seeds)) < len(seeds):
        raise UserFacingError(f"--curve-from: the curves must come from different seeds, got seeds {seeds} "
                              f"(a curve without a 'seed' field is seed {SEED})")
    view_sets = [set(heldout.recorded_views(curve)) for curve in curves]
    differing = [source for source, names in zip(sources, view_sets) if names != view_sets[0]]
    if differing:
        raise UserFacingError(f"--curve-from: {', '.join(differing)} recorded other test-time views than "
                              f"{sources[0]} ({', '.join(sorted(view_sets[0])) or 'none'}); pooled, the "
                              "views missing from one would silently drop out of the choice")
    first = curves[0]
    counts = heldout.summed_counts(curves, lambda curve: {city: fold["counts"]
                                                          for city, fold in curve["folds"].items()})
    results = [folds.FoldResult(city, first["per_city"][city]["tiles_held_out"], counts[city],
                                _mean_history([curve["folds"][city]["history"] for curve in curves]),
                                sum(curve["folds"][city]["train_seconds"] for curve in curves), model=None)
               for city in first["folds"]]
    pooled = curve_record(results, first["curve_epochs"], sum(curve["seconds"] for curve in curves))
    pooled.update({field: first[field] for field in POOLED_ALIKE + ("source",) if field in first})
    if any(curve.get("set_aside") for curve in curves):  # measured per seed, not a setting: kept apart
        pooled["set_aside_by_seed"] = {str(seed): curve.get("set_aside") for seed, curve in zip(seeds, curves)}
    if view_sets[0]:
        pooled["views"] = {name: {city: counts.tolist() for city, counts in heldout.summed_counts(
            curves, lambda curve: heldout.recorded_views(curve)[name]).items()} for name in sorted(view_sets[0])}
    pooled["variant"] = " + ".join(str(curve.get("variant", source)) for curve, source in zip(curves, sources))
    pooled["pooled"] = {"seeds": seeds, "from": sources}
    pooled["chosen"]["rule"] += f", on confusion counts summed over seeds {', '.join(map(str, seeds))}"
    return pooled


def _mean_history(histories: list[dict]) -> dict:
    shared = set.intersection(*(set(history) for history in histories))
    return {key: np.mean([history[key] for history in histories], axis=0).tolist() for key in sorted(shared)}


def _require_a_curve(request) -> None:
    path = Path(request.out) / "curve.json"
    if not (request.curve or request.curve_from or path.is_file()):
        raise UserFacingError(f"{path} does not exist: run once with --curve (the cross-validated "
                              "learning curve that chooses the epochs and threshold)")


def curve_record(results: list[folds.FoldResult], curve_epochs: int, seconds: float) -> dict:
    epochs, threshold = folds.choose_schedule(results)
    per_city = {}
    for result in results:  # each city scored with epochs and threshold chosen on the others
        own_epochs, own_threshold = folds.choose_schedule(results, exclude=result.val_area)
        per_city[result.val_area] = {"epochs": own_epochs, "threshold": own_threshold,
                                     "tiles_held_out": result.tiles,
                                     **folds.fold_scores(result, own_epochs, own_threshold)}
    mean_iou = folds.mean_fold_iou(results)
    return {
        "curve_epochs": curve_epochs, "thresholds": [float(t) for t in folds.train.THRESHOLDS],
        "chosen": {"epochs": epochs, "threshold": threshold,
                   "rule": f"first epoch within {folds.TIE} of the best mean held-out building IoU, "
                           "at that epoch's best threshold"},
        "mean_heldout_building_iou_by_epoch": [float(v) for v in mean_iou.max(axis=1)],
        "folds": {r.val_area: {"counts": r.counts.tolist(), "history": r.history,
                               "train_seconds": round(r.train_seconds, 1)} for r in results},
        "per_city": per_city, "seconds": round(seconds, 1), "machine": describe_machine(),
        "date": _now(),
    }


def inference_choice(curve: dict, max_passes: float | None = None) -> tuple[int, float, str]:
    """(epochs, threshold, test-time views) as cross-validation chose them: the serving option
    (ablations.heldout.serving_options: threshold chosen on the other cities or fixed at 0.5,
    which test-time views, within `max_passes`) whose per-city scores are best on average; its
    scales are the option's "scales" (ablations.heldout.best_option)."""
    _, option = heldout.best_option(curve, max_passes)
    return option["epochs"], option["threshold"], option["tta"]


def score_test(model, inference: tuple, test_samples, budget) -> dict | None:
    """The test area scored as the model is served: (threshold, test-time views, scales)."""
    if not test_samples:
        return None
    from ablations.verify import full_model_scores

    threshold, tta, scales = inference
    return full_model_scores(model, threshold, *folders.load_arrays(test_samples, budget.size), tta=tta, scales=scales)


def final_metadata(request, config, recipe, epochs, inference, curve, history, seconds, test,
                   source, pool_samples, test_samples) -> dict:
    areas = sorted({s.area or "?" for s in pool_samples})
    threshold, tta, scales = inference
    return {
        "name": f"final/{config.name}", "config": config.to_dict(), "recipe": recipe.to_dict(),
        "threshold": threshold, "inference": {"threshold": threshold, "scales": list(scales), "tta": tta},
        "epochs": epochs, "schedule_epochs": curve["curve_epochs"], "seed": SEED,
        "history": history, "train_seconds": round(seconds, 1),
        "metrics": {"test": test, "cross_validated": {
            "mean_heldout_building_iou": curve["mean_heldout_building_iou_by_epoch"][epochs - 1],
            "per_city": _served_rows(curve, request.max_passes),
            # Each city under the option the other cities chose: the option of the rows above
            # was chosen on every city, the row's own included.
            "per_city_option_left_out": heldout.option_left_out(curve, request.max_passes),
            "passes_budget": passes_budget(curve, request.max_passes)}},
        "data": {"source": source, "trained_on": areas, "tiles": len(pool_samples),
                 "test_area": request.test_area, "test_tiles": len(test_samples)},
        "budget": request.budget, "machine": describe_machine(), "date": _now(),
        "command": "python -m ablations.fit " + " ".join(fit_argv(request)),
    }


def passes_budget(curve: dict, max_passes: float | None) -> dict:
    """What the latency budget costs: the option served within it against the best of all."""
    within, unbounded = (heldout.best_option(curve, limit) for limit in (max_passes, None))
    return {"max_passes": max_passes, "served": within[0], "best_of_all": unbounded[0],
            "mean_building_iou": {name: heldout.mean_of(option["per_city"])["building_iou"]
                                  for name, option in dict([within, unbounded]).items()}}


def _budget_lines(budget: dict | None) -> list[str]:
    if not budget or budget["max_passes"] is None:
        return []
    served, best, iou = budget["served"], budget["best_of_all"], budget["mean_building_iou"]
    cost = ("nothing: the best option fits it" if served == best else
            f"{iou[best] - iou[served]:.3f} mean building IoU: `{best}` would score {iou[best]:.3f}")
    return [f"- **Latency budget** (`--max-passes {budget['max_passes']:g}`: at most {budget['max_passes']:g} "
            f"full-size passes of the network an image): served `{served}`, mean building IoU {iou[served]:.3f}; "
            f"the budget costs {cost}."]


def _served_rows(curve: dict, max_passes: float | None = None) -> dict:
    name, option = heldout.best_option(curve, max_passes)
    return {city: {"epochs": option["epochs"], "rule": name, **row} for city, row in option["per_city"].items()}


def report(request, metadata: dict, curve: dict) -> str:
    from tabulate import tabulate

    rows = [{"held-out city": city, "epochs (chosen on the other cities)": row["epochs"],
             "threshold": f"{row['threshold']:.2f}", "precision": f"{row['precision']:.3f}",
             "recall": f"{row['recall']:.3f}", "building IoU": f"{row['building_iou']:.3f}",
             "mean IoU": f"{row['mean_iou']:.3f}"}
            for city, row in metadata["metrics"]["cross_validated"]["per_city"].items()]
    test = metadata["metrics"]["test"]
    data = metadata["data"]
    lines = [
        f"# Final fit: `{metadata['name']}`", "",
        f"- **Command:** `{metadata['command']}`; {metadata['date']}; {metadata['machine']}",
        f"- **Trained on:** {data['tiles']} tiles of {', '.join(data['trained_on'])} ({data['source']}), "
        f"{metadata['epochs']} epochs of a {metadata['schedule_epochs']}-epoch cosine schedule, "
        f"{metadata['recipe']['augmentation']} augmentation, threshold {metadata['threshold']:.2f}; "
        f"{metadata['train_seconds']:.0f} s of training, {metadata['cost']['wall_minutes']} min and "
        f"{metadata['cost']['peak_rss_gib']} GiB peak in all.",
        f"- **Epochs and threshold** from the cross-validated learning curve ({curve['chosen']['rule']}): "
        f"mean held-out building IoU {metadata['metrics']['cross_validated']['mean_heldout_building_iou']:.3f} "
        "(the curve itself: scale 1, no test-time views; as served, the table below). "
        f"Served: `{metadata['inference']['tta']}` test-time views at scales "
        f"{', '.join(f'{s:g}' for s in metadata['inference']['scales'])} and threshold {metadata['threshold']:.2f}, "
        "the option (threshold chosen on the other cities or fixed at 0.5; no test-time views or one of the "
        f"recorded options: {', '.join(heldout.recorded_views(curve)) or 'none recorded'}) with the best "
        "mean per-city building IoU within the latency budget.",
        *_budget_lines(metadata["metrics"]["cross_validated"].get("passes_budget")),
        "", "## Quality on a city the model never saw", "",
        "Each row: the same recipe trained on the other cities only (a fold of the learning curve), "
        "scored on the held-out city at the epoch and threshold chosen on the *other* folds. Which "
        "option to serve (test-time views and scales) was chosen on the mean over every city, the "
        "row's own included; the second table chooses it on the other cities only. Pixel counts "
        "summed over the city; building IoU = TP/(TP+FP+FN), mean IoU = mean of building and "
        "background IoU.", "",
        tabulate(rows, headers="keys", tablefmt="github"), "",
        *left_out_lines(metadata["metrics"]["cross_validated"].get("per_city_option_left_out")),
    ]
    if curve.get("pooled"):
        seeds = ", ".join(map(str, curve["pooled"]["seeds"]))
        lines += [f"The curve pools the recipe's learning curves under seeds {seeds} "
                  f"({', '.join(f'`{source}`' for source in curve['pooled']['from'])}): each city's "
                  "confusion counts are summed over the seeds, so the epochs, threshold and views are "
                  "chosen, and each row scored, on every seed's held-out pixels at once. The model "
                  f"itself trains with seed {metadata['seed']}.", ""]
    if test:
        served = metadata["inference"]
        lines += [f"**Test area {data['test_area']}** ({data['test_tiles']} tiles, end to end as served: "
                  f"`{served['tta']}` test-time views at scales {', '.join(f'{s:g}' for s in served['scales'])}): precision "
                  f"{test['precision']:.3f}, recall {test['recall']:.3f}, building IoU {test['building_iou']:.3f}, "
                  f"mean IoU {test['mean_iou']:.3f}.", ""]
    else:
        lines += ["No test area (`--test-area none`): every city trains the model that ships, so its "
                  "quality estimate is the per-city tables above: the first lets each row's city help choose "
                  "the serving option, the second does not.", ""]
    lines += ["![learning curve: training and held-out building IoU by epoch](curve.png)", "",
              "![samples: RGB, truth, prediction](samples.png)", ""]
    return "\n".join(lines)


def left_out_lines(rows: dict | None) -> list[str]:
    """The per-city table with each city's serving option chosen on the other cities, and its mean."""
    from tabulate import tabulate

    if not rows:
        return []
    table = [{"held-out city": city, "option chosen on the other cities": f"`{row['rule']}`",
              **{label: f"{row[key]:.3f}" for key, label in _SHOWN}} for city, row in rows.items()]
    mean = heldout.mean_of(rows)
    table.append({"held-out city": "**mean**", "option chosen on the other cities": "",
                  **{label: f"**{mean[key]:.3f}**" for key, label in _SHOWN}})
    return ["Each row's serving option chosen on the other cities only (`heldout.option_left_out`): "
            "nothing in a row is chosen on its own city.", "",
            tabulate(table, headers="keys", tablefmt="github"), ""]


_SHOWN = (("precision", "precision"), ("recall", "recall"), ("building_iou", "building IoU"), ("mean_iou", "mean IoU"))


def point_served_model(results_root: Path, model_path: Path) -> None:
    from zoo.served import POINTER

    relative = Path(model_path).resolve().relative_to(Path(results_root).resolve())
    write_text_atomic(Path(results_root) / POINTER, f"{relative}\n")
    print(f"{Path(results_root) / POINTER} now names {relative}")


def fit_argv(request: FitRequest) -> list[str]:
    parts = []
    if request.data:
        parts += ["--data", str(request.data)]
    parts += ["--test-area", str(request.test_area)]
    if request.budget != "standard":
        parts += ["--budget", request.budget]
    if request.curve:
        parts += ["--curve", "--curve-epochs", str(request.curve_epochs)]
    if request.epochs:
        parts += ["--epochs", str(request.epochs)]
    for path in request.curve_from:
        parts += ["--curve-from", str(path)]
    if request.max_passes != heldout.SERVED_MAX_PASSES:
        parts += ["--max-passes", "inf" if request.max_passes is None else f"{request.max_passes:g}"]
    if Path(request.out) != Path("results/final"):
        parts += ["--out", str(request.out)]
    return parts


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
