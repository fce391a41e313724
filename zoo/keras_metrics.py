"""Keras-side accumulator of the same confusion counts, reading zoo.metrics.FORMULAS."""

from __future__ import annotations

import math

import keras
from keras import ops

from zoo.metrics import FORMULAS


@keras.saving.register_keras_serializable(package="zoo")
class PixelMetric(keras.metrics.Metric):
    """One of zoo.metrics.METRIC_NAMES over logits, counts summed over every batch seen."""

    def __init__(self, metric: str = "building_iou", threshold: float = 0.5, name=None, **kwargs):
        super().__init__(name=name or metric, **kwargs)
        self.metric = metric
        self.threshold = threshold
        self._logit_threshold = math.log(threshold / (1 - threshold))
        self.counts = {
            k: self.add_variable((), initializer="zeros", name=k, dtype="float64")
            for k in ("tp", "fp", "fn", "tn")
        }

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth = ops.cast(y_true > 0.5, "float64")
        pred = ops.cast(y_pred > self._logit_threshold, "float64")
        tp = ops.sum(truth * pred)
        predicted, actual, total = ops.sum(pred), ops.sum(truth), ops.cast(ops.size(truth), "float64")
        new = {"tp": tp, "fp": predicted - tp, "fn": actual - tp, "tn": total - predicted - actual + tp}
        for key, value in new.items():
            self.counts[key].assign_add(value)

    def result(self):
        if self.metric == "mean_iou":
            return (self._ratio("building_iou") + self._ratio("background_iou")) / 2
        return self._ratio(self.metric)

    def _ratio(self, metric):
        numerator, denominator = FORMULAS[metric]({k: v.value for k, v in self.counts.items()})
        return ops.cast(ops.where(denominator > 0, numerator / ops.maximum(denominator, 1.0), 0.0), "float32")

    def reset_state(self):
        for variable in self.counts.values():
            variable.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "metric": self.metric, "threshold": self.threshold}
