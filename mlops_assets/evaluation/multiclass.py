"""Multiclass metrics from a probability matrix: log loss, accuracy, macro F1 and per-class recall.

Labels are class codes (the column index of the class in the probability matrix), so the caller
decides the class order once (the model's `classes`) and every metric agrees with it. Plain
numpy for the same reason as the binary metrics: sliced reports call these once per slice value.
"""

from __future__ import annotations

import re

import numpy as np
from numpy.typing import ArrayLike

MULTICLASS_METRICS: tuple[str, ...] = ("log_loss", "accuracy", "macro_f1")
RECALL_PREFIX = "recall_"
LOG_LOSS_EPS = 1e-15
_NAN = float("nan")


def recall_name(label: str) -> str:
    """Metric name of one class's recall, restricted to the characters MLflow accepts in a metric name."""
    return RECALL_PREFIX + re.sub(r"[^\w\-. /:]", "_", str(label))


def _checked(y_true: ArrayLike, y_prob: ArrayLike, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Codes and probabilities that fit together, or a one-line error saying what does not."""
    prob = np.asarray(y_prob, dtype=np.float64)
    codes = np.asarray(y_true, dtype=np.float64).ravel()
    if prob.ndim != 2 or prob.shape[1] != len(classes):
        raise ValueError(f"multiclass scores must be a (rows, {len(classes)}) probability matrix, got {prob.shape}")
    if prob.shape[0] != codes.size:
        raise ValueError(f"y_true has {codes.size} values but the scores have {prob.shape[0]} rows")
    if not (np.isfinite(prob).all() and np.isfinite(codes).all()):
        raise ValueError("labels and scores must be finite (no NaN, null or inf)")
    if codes.size and (codes.min() < 0 or codes.max() >= len(classes) or not np.all(codes == np.round(codes))):
        raise ValueError(f"multiclass labels must be class codes 0..{len(classes) - 1}")
    if prob.size and (prob.min() < 0.0 or prob.max() > 1.0):
        raise ValueError("multiclass scores must be probabilities within [0, 1]")
    return codes.astype(np.int64), prob


def multiclass_metrics(y_true: ArrayLike, y_prob: ArrayLike, classes: list[str]) -> dict[str, float]:
    """MULTICLASS_METRICS, `recall_<class>` per class (NaN without support) and `rows`.

    Log loss takes the clipped probability of the true class (rows are not renormalised: a
    softmax already sums to one). Macro F1 averages over the classes present in the labels or
    the predictions, as sklearn does without an explicit label list.
    """
    codes, prob = _checked(y_true, y_prob, classes)
    recalls = {recall_name(c): _NAN for c in classes}
    if codes.size == 0:
        return dict.fromkeys(MULTICLASS_METRICS, _NAN) | recalls | {"rows": 0.0}
    predicted = prob.argmax(axis=1)
    k = len(classes)
    support = np.bincount(codes, minlength=k).astype(float)
    predicted_count = np.bincount(predicted, minlength=k).astype(float)
    true_pos = np.bincount(codes[predicted == codes], minlength=k).astype(float)
    present = (support + predicted_count) > 0
    f1 = 2 * true_pos[present] / (support[present] + predicted_count[present])
    for code, label in enumerate(classes):
        if support[code]:
            recalls[recall_name(label)] = float(true_pos[code] / support[code])
    true_prob = np.clip(prob[np.arange(codes.size), codes], LOG_LOSS_EPS, 1.0)
    return {
        "log_loss": float(-np.mean(np.log(true_prob))),
        "accuracy": float(np.mean(predicted == codes)),
        "macro_f1": float(f1.mean()),
    } | recalls | {"rows": float(codes.size)}
