"""Markdown tables, CSVs, plots and the selected model, all from the trial records.

Every file is written atomically (temp file + rename), so an interrupted run never leaves a
half-written table, and rerunning rebuilds everything from `trials/*.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from ablations import plots
from ablations.studies import configuration_of
from zoo.config import DecoderConfig
from zoo.files import write_json_atomic, write_text_atomic

TEST_METRICS = ("precision", "recall", "building_iou", "mean_iou", "f1", "accuracy", "median_image_iou")
SELECTION_RULE = (
    "highest mean validation building IoU; configurations within 0.005 of the "
    "best are tied, and the tie goes to the architecture with the lowest latency, "
    "then to the highest validation building IoU within it"
)
TIE = 0.005


def write_context(study_dir: Path, context: dict) -> None:
    write_json_atomic(Path(study_dir) / "context.json", context)


def earlier_runs(study_dir: Path) -> list[dict]:
    """What earlier invocations of a study cost, from its context.json (empty if none)."""
    path = Path(study_dir) / "context.json"
    if not path.is_file():
        return []
    return recorded_runs(json.loads(path.read_text()))


def recorded_runs(context: dict) -> list[dict]:
    """Each invocation's cost. Studies recorded before `runs` existed kept only the last one,
    as `this_run`."""
    return context.get("runs") or ([context["this_run"]] if context.get("this_run") else [])


def load_records(study_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(study_dir) / "trials").glob("*.json"))]


def full_schedule_records(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(trials that trained the budget's whole schedule, first-rung trials of successive
    halving). A survivor's second-rung record stands for its configuration; its first-rung
    record and those of the configurations cut appear only in the halving section."""
    first_rung = [r for r in records if r.get("halving", {}).get("rung") == 0]
    return [r for r in records if r.get("halving", {}).get("rung") != 0], first_rung


def halving_section(first_rung: list[dict], finished: list[dict], context: dict) -> str:
    """What successive halving cut: each configuration's first-rung score (mean over seeds,
    as the cut ranked them), which continued, and where those ended."""
    if not first_rung:
        return ""
    continued = {r["halving"]["parent"]: r for r in finished if r.get("halving")}
    epochs = context["budget_detail"]["epochs"]
    by_configuration: dict[str, list[dict]] = {}
    for r in first_rung:
        by_configuration.setdefault(configuration_of(r["hyperparameters"]), []).append(r)
    ranked = sorted(
        by_configuration.items(),
        key=lambda item: -sum(r["metrics"]["val_building_iou"] for r in item[1]) / len(item[1]),
    )
    rows = []
    for rank, (choices, trials) in enumerate(ranked, start=1):
        later = [continued[r["trial_id"]] for r in trials if r["trial_id"] in continued]
        rows.append(
            {
                "rank after epoch 1": rank,
                "configuration": choices,
                "seeds": len(trials),
                "val building IoU, epoch 1": f"{_mean(trials):.3f}",
                f"val building IoU, epoch {epochs}": f"{_mean(later):.3f}" if later else "cut",
                "trials": " ".join(
                    r["trial_id"]
                    + (f" -> {continued[r['trial_id']]['trial_id']}" if r["trial_id"] in continued else "")
                    for r in trials
                ),
            }
        )
    spent = len(first_rung) + len(continued) * (epochs - 1)
    return "\n".join(
        [
            "",
            "## Successive halving",
            "",
            f"Every configuration trained its folds for one epoch of its {epochs}-epoch cosine schedule; the "
            f"{context['halving']} with the best mean validation building IoU (over seeds) then continued "
            f"from their saved fold states (weights, optimizer moments, batch order) to epoch {epochs}, "
            "exactly as "
            f"an uninterrupted trial would have trained. The table above holds those; the rest were cut "
            f"after one epoch, with no test scores. Trial-epochs trained: {spent} of the full grid's "
            f"{len(first_rung) * epochs}.",
            "",
            tabulate(rows, headers="keys", tablefmt="github"),
            "",
        ]
    )


def _mean(records: list[dict]) -> float:
    return sum(r["metrics"]["val_building_iou"] for r in records) / len(records)


def trials_frame(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        row = {
            "trial_id": r["trial_id"],
            "variant": r["variant"],
            **r["config"],
            **({"rung": r["halving"]["rung"]} if "halving" in r else {}),
            **{f"recipe_{k}": v for k, v in r["recipe"].items()},
            "seed": r["seed"],
            "threshold": r["threshold"],
            **r["metrics"],
            "trainable_params": r["trainable_params"],
            "total_params": r["total_params"],
            "latency_ms": r["latency_ms"],
            "train_seconds": r["train_seconds"],
        }
        rows.append(row)
    return pd.DataFrame(rows)


def configuration_key(frame: pd.DataFrame) -> list[str]:
    """Columns that identify a configuration: every config/recipe field except the seed."""
    fields = list(DecoderConfig.__dataclass_fields__) + [c for c in frame if c.startswith("recipe_")]
    return [c for c in fields if c in frame]


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: mean and std across seeds, best first."""
    key = configuration_key(frame)
    numeric = [c for c in frame.columns if c not in key + ["trial_id", "variant", "seed"]]
    grouped = frame.groupby(key, dropna=False)
    summary = grouped[numeric].mean()
    spread = grouped[numeric].std(ddof=0).add_suffix("_std")
    summary = summary.join(spread)
    summary["seeds"] = grouped.size()
    summary["variant"] = grouped["variant"].first()
    summary["trial_ids"] = grouped["trial_id"].agg(lambda ids: " ".join(sorted(ids)))
    return summary.reset_index().sort_values("val_building_iou", ascending=False, ignore_index=True)


def select_best(summary: pd.DataFrame) -> pd.Series:
    """Best validation score; near-ties go to the faster architecture.

    Latency belongs to the architecture, not to the recipe: configurations that share a
    decoder differ in measured latency only by machine noise, so they are ranked by the
    median latency of their architecture and then by their validation score.
    """
    top = summary["val_building_iou"].max()
    tied = summary[summary["val_building_iou"] >= top - TIE].copy()
    architecture = [c for c in DecoderConfig.__dataclass_fields__ if c in tied]
    tied["_architecture_ms"] = tied.groupby(architecture, dropna=False)["latency_ms"].transform("median")
    ranked = tied.sort_values(["_architecture_ms", "val_building_iou"], ascending=[True, False])
    return ranked.drop(columns="_architecture_ms").iloc[0]


def varying_columns(summary: pd.DataFrame) -> list[str]:
    key = configuration_key(summary)
    return [c for c in key if summary[c].nunique() > 1] or ["variant"]


def markdown_table(summary: pd.DataFrame, best_variant_row: pd.Series) -> str:
    shown = ["variant"] + [c for c in varying_columns(summary) if c not in ("upsampler", "skip")]
    rows = []
    for _, row in summary.iterrows():
        mark = " **(selected)**" if row["trial_ids"] == best_variant_row["trial_ids"] else ""
        cells = {c: f"{row[c]}{mark if c == 'variant' else ''}" for c in shown}
        for metric in TEST_METRICS + ("val_building_iou",):
            cells[_label(metric)] = _mean_std(row, metric)
        cells.update(fold_cells(summary, row))
        cells["threshold"] = f"{row['threshold']:.2f}"
        cells["trainable params"] = f"{row['trainable_params'] / 1e6:.2f} M"
        cells["latency ms"] = f"{row['latency_ms']:.0f}"
        cells["train s"] = f"{row['train_seconds']:.0f}"
        rows.append(cells)
    return tabulate(rows, headers="keys", tablefmt="github")


def fold_cells(summary: pd.DataFrame, row) -> dict:
    """Under cross-validation by area: each fold's validation building IoU, and the spread
    across folds beside the mean (the objective)."""
    columns = [c for c in summary.columns if c.startswith("fold_") and c.endswith("_val_building_iou")]
    if not columns:
        return {}
    cells = {f"val {c[len('fold_') : -len('_val_building_iou')]}": f"{row[c]:.3f}" for c in columns}
    cells["val std across folds"] = f"{row['val_building_iou_fold_std']:.3f}"
    return cells


def _label(metric: str) -> str:
    labels = {
        "building_iou": "test building IoU",
        "mean_iou": "test mean IoU",
        "median_image_iou": "test median per-image building IoU",
        "val_building_iou": "val building IoU",
    }
    return labels.get(metric, f"test {metric.replace('_', ' ')}")


def _mean_std(row, metric) -> str:
    std = row.get(f"{metric}_std", 0.0)
    return f"{row[metric]:.3f}" + (f" ± {std:.3f}" if row["seeds"] > 1 else "")


def header(context: dict) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in context["counts"].items())
    b = context["budget_detail"]
    return "\n".join(
        [
            f"# Study `{context['study']}`",
            "",
            f"{context['summary']}.",
            "",
            f"- **Data:** {context['data']}",
            f"- **Split:** {context['split']} ({counts} tiles)",
            f"- **Budget:** `{context['budget']}`: {b['size']} px tiles, {b['epochs']} epochs, "
            f"{b['augmented_copies']} encoded copies per training tile, images "
            f"{b['max_images'] or 'all'}; seeds per configuration: {context['seeds']}",
            f"- **Search:** {context['search']} over {context['planned_trials']} trials; objective "
            f"{context['objective']}; base decoder `{DecoderConfig.from_dict(context['base_decoder']).name}`"
            + (
                f"; successive halving keeps {context['halving']} after the first epoch (below)"
                if context.get("halving")
                else ""
            ),
            f"- **Selection rule:** {SELECTION_RULE}. Thresholds are chosen on the validation "
            "split; test numbers are pixel counts summed over the whole test split.",
            f"- **Machine:** {context['machine']}; {_versions(context['versions'])}",
            f"- **Date:** {context['date']}; command `{context['command']}`; encoder weights "
            f"`{context['weights']}`",
            _cost_line(context),
            "",
            "",
        ]
    )


def _cost_line(context: dict) -> str:
    runs = recorded_runs(context)
    if not runs:
        return ""
    each = "; ".join(
        f"{r['wall_minutes']} min wall, peak memory {r['peak_rss_gib']} GiB"
        + (f" ({r['trials_run']} trials)" if "trials_run" in r else "")
        for r in runs
    )
    return (
        f"- **Cost, each invocation of the command** (search, trials and report, the report's "
        f"end-to-end re-score included; a resumed run counts only its own part): {each}"
    )


def _versions(versions: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def write_all(study_dir: Path, context: dict, encoder, test_arrays) -> dict:
    study_dir = Path(study_dir)
    everything = load_records(study_dir)
    records, first_rung = full_schedule_records(everything)
    if not records:
        raise RuntimeError(f"no trial in {study_dir / 'trials'} has trained its whole schedule")
    frame = trials_frame(records)
    summary = summarise(frame)
    best_row = select_best(summary)
    write_text_atomic(study_dir / "trials.csv", trials_frame(everything).to_csv(index=False))
    table = (
        header(context)
        + markdown_table(summary, best_row)
        + "\n"
        + halving_section(first_rung, records, context)
    )
    plots.write_all(study_dir, frame, summary, records, test_arrays)
    best = best_record(records, best_row)
    best_metadata = save_best(study_dir, best, context, encoder, test_arrays)
    table += _selected_paragraph(best, best_metadata) + plots.figure_links()
    write_text_atomic(study_dir / "table.md", table)
    return best


def best_record(records, best_row) -> dict:
    ids = best_row["trial_ids"].split()
    of_config = [r for r in records if r["trial_id"] in ids]
    return max(of_config, key=lambda r: r["metrics"]["val_building_iou"])


def save_best(study_dir: Path, best: dict, context: dict, encoder, test_arrays) -> dict:
    """Rebuild the selected trial's model, check it end to end on the test split, save it."""
    from training.verify import full_model_scores
    from zoo import saving, unet

    config = DecoderConfig.from_dict(best["config"])
    model = unet.build(config, encoder=encoder)
    unet.decoder_of(model).load_weights(study_dir / "trials" / f"{best['trial_id']}.weights.h5")
    end_to_end = full_model_scores(model, best["threshold"], *test_arrays)
    metadata = {
        "name": f"{context['study']}/{config.name}",
        "config": best["config"],
        "recipe": best["recipe"],
        "threshold": best["threshold"],
        "seed": best["seed"],
        "trial_id": best["trial_id"],
        "metrics": {"test": end_to_end, "trial": best["metrics"]},
        "latency_ms": best["latency_ms"],
        "trainable_params": best["trainable_params"],
        "train_seconds": best["train_seconds"],
        "data": {
            "source": context["data"],
            "split": context["split"],
            "counts": context["counts"],
            "size": context["budget_detail"]["size"],
        },
        "study": context["study"],
        "budget": context["budget"],
        "machine": context["machine"],
        "selection_rule": SELECTION_RULE,
    }
    saving.save(model, study_dir / "best" / "model.keras", metadata)
    return metadata


def _selected_paragraph(best: dict, metadata: dict) -> str:
    t = metadata["metrics"]["test"]
    return (
        f"\n**Selected:** `{best['variant']}` (trial {best['trial_id']}, seed {best['seed']}, "
        f"threshold {best['threshold']:.2f}), saved as `best/model.keras`. Re-scored end to end "
        f"through the full model (encoder included) on the test split: precision "
        f"{t['precision']:.3f}, recall {t['recall']:.3f}, building IoU {t['building_iou']:.3f}, "
        f"mean IoU {t['mean_iou']:.3f}, F1 {t['f1']:.3f}; per-image building IoU median "
        f"{t['image_iou']['median']:.3f} (p10 {t['image_iou']['p10']:.3f}, p90 "
        f"{t['image_iou']['p90']:.3f}, an image with empty truth and empty prediction "
        f"counts 1.0).\n"
    )
