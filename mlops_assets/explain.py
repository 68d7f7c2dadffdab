"""Per-prediction explanations from TreeSHAP contributions: pure numpy, shared by serving and evaluation."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

UNITS = {"binary": "log-odds", "regression": "prediction", "multiclass": "raw score (softmax input)"}


def top_contributions(
    contribution_row: np.ndarray, feature_names: list[str], k: int
) -> list[dict[str, float | str]]:
    """The ``k`` features that moved one prediction the most, to explain a single served request.

    Accepts the row with or without LightGBM's trailing bias value; the bias is never returned.
    """
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    row = np.asarray(contribution_row, dtype=np.float64).ravel()
    if row.size == len(feature_names) + 1:
        row = row[:-1]
    if row.size != len(feature_names):
        raise ValueError(f"contribution row has {row.size} values for {len(feature_names)} features")
    order = np.argsort(-np.abs(row), kind="stable")[:k]
    return [{"feature": feature_names[index], "contribution": float(row[index])} for index in order]


def _clean(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


def explanation(contribution_row: np.ndarray, feature_names: list[str], inputs: Mapping[str, object], k: int,
                problem: str, predicted_class: str | None = None) -> dict[str, object]:
    """Top-k contributions with the input values; base_value + top + other = the raw score explained
    (log-odds for binary, the value for regression, the predicted class's softmax input for multiclass)."""
    row = np.asarray(contribution_row, dtype=np.float64).ravel()
    top = top_contributions(row, feature_names, k)
    for item in top:
        item["value"] = _clean(inputs.get(str(item["feature"])))  # type: ignore[assignment]
    rest = float(row[:-1].sum()) - sum(float(t["contribution"]) for t in top)
    out: dict[str, object] = {"units": UNITS[problem], "base_value": float(row[-1]), "top": top, "other": rest}
    if predicted_class is not None:
        out["class"] = predicted_class
    return out
