"""PNG charts for the model card, returned as bytes so callers can attach them anywhere.

Figures are built with the object-oriented API on an explicit Agg canvas instead of pyplot: no
display is needed, no global backend is switched for the rest of the process, nothing is left in
pyplot's figure registry, and it is safe in multi-threaded executors.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from numpy.typing import ArrayLike

from mlops_assets.evaluation.metrics import paired_arrays, shap_importance

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
MAX_POINTS = 2000
_SEED = 0


def _figure(width: float, height: float, columns: int = 1) -> tuple[Figure, list[Axes]]:
    # Imported on the first plot, not by every process that loads the definitions.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, list(np.atleast_1d(figure.subplots(1, columns)))


def _png(figure: Figure) -> bytes:
    """Render and release the figure; the bytes are all the caller keeps."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    figure.clear()
    return buffer.getvalue()


def _binary_inputs(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Curves are undefined without both classes: say so instead of drawing an empty chart."""
    truth, prob = paired_arrays(y_true, y_prob)
    if np.unique(truth).size != 2 or not np.isin(truth, (0.0, 1.0)).all():
        raise ValueError("binary curves need labels with both classes 0 and 1")
    return truth, prob


def _subsample(size: int, limit: int) -> np.ndarray:
    """Seeded row subset so charts stay fast and identical between runs."""
    if size <= limit:
        return np.arange(size)
    return np.sort(np.random.default_rng(_SEED).choice(size, limit, replace=False))


def roc_curve_png(y_true: ArrayLike, y_prob: ArrayLike) -> bytes:
    """ROC curve with its area, against the chance diagonal."""
    truth, prob = _binary_inputs(y_true, y_prob)
    from sklearn.metrics import auc, roc_curve

    false_pos, true_pos, _ = roc_curve(truth, prob)
    figure, (axes,) = _figure(5, 5)
    axes.plot(false_pos, true_pos, label=f"AUC = {auc(false_pos, true_pos):.4f}")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set(title="ROC curve", xlabel="False positive rate", ylabel="True positive rate")
    axes.legend(loc="lower right")
    return _png(figure)


def pr_curve_png(y_true: ArrayLike, y_prob: ArrayLike) -> bytes:
    """Precision-recall curve against the positive-rate baseline, the informative view for rare positives."""
    truth, prob = _binary_inputs(y_true, y_prob)
    from sklearn.metrics import average_precision_score, precision_recall_curve

    precision, recall, _ = precision_recall_curve(truth, prob)
    figure, (axes,) = _figure(5, 5)
    axes.step(recall, precision, where="post", label=f"AP = {average_precision_score(truth, prob):.4f}")
    axes.axhline(truth.mean(), linestyle="--", color="grey", label="positive rate")
    axes.set(title="Precision-recall curve", xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.02))
    axes.legend(loc="upper right")
    return _png(figure)


def calibration_png(y_true: ArrayLike, y_prob: ArrayLike, bins: int = 10) -> bytes:
    """Reliability diagram on equal-width bins; point size shows how many rows back each bin."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    truth, prob = _binary_inputs(y_true, y_prob)
    which = np.clip((prob * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    filled = counts > 0
    mean_prob = np.bincount(which, weights=prob, minlength=bins)[filled] / counts[filled]
    observed = np.bincount(which, weights=truth, minlength=bins)[filled] / counts[filled]
    figure, (axes,) = _figure(5, 5)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    axes.plot(mean_prob, observed, color="tab:blue", label="model")
    axes.scatter(mean_prob, observed, s=20 + 180 * counts[filled] / counts.max(), color="tab:blue", zorder=3)
    axes.set(
        title="Calibration (reliability diagram)",
        xlabel="Mean predicted probability",
        ylabel="Observed positive rate",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    axes.legend(loc="upper left")
    return _png(figure)


def _barh(axes: Axes, labels: list[str], values: np.ndarray) -> None:
    """Largest bar on top, as importance charts are read top-down."""
    positions = np.arange(len(labels))[::-1]
    axes.barh(positions, values, color="tab:blue")
    axes.set_yticks(positions, labels)


def feature_importance_png(importance: pl.DataFrame, value_column: str, top: int = 20) -> bytes:
    """Horizontal bars of the ``top`` features by ``value_column`` (gain, split count, mean |SHAP|...)."""
    missing = [column for column in ("feature", value_column) if column not in importance.columns]
    if missing:
        raise ValueError(f"importance frame lacks column(s): {', '.join(missing)}")
    shown = importance.sort(value_column, descending=True, nulls_last=True).head(top)
    figure, (axes,) = _figure(6, 1.2 + 0.3 * max(shown.height, 1))
    _barh(axes, shown.get_column("feature").to_list(), shown.get_column(value_column).to_numpy())
    axes.set(title=f"Feature importance ({value_column})", xlabel=value_column, ylabel="Feature")
    return _png(figure)


def shap_summary_png(contributions: np.ndarray, feature_names: list[str], top: int = 15) -> bytes:
    """Mean |SHAP| bars beside a jittered strip of per-row contributions (at most 2000 rows)."""
    ranked = shap_importance(contributions, feature_names).head(top)
    names = ranked.get_column("feature").to_list()
    columns = [feature_names.index(name) for name in names]
    matrix = np.asarray(contributions, dtype=np.float64)
    sample = matrix[_subsample(matrix.shape[0], MAX_POINTS)][:, columns]
    figure, (bars, strip) = _figure(10, 1.2 + 0.3 * max(len(names), 1), columns=2)
    _barh(bars, names, ranked.get_column("mean_abs_shap").to_numpy())
    bars.set(title="Mean |SHAP|", xlabel="Mean |contribution| (model output units)", ylabel="Feature")
    jitter = np.random.default_rng(_SEED).uniform(-0.3, 0.3, size=sample.shape)
    positions = np.arange(len(names))[::-1]
    colours = np.sign(sample).ravel()
    strip.scatter(sample.ravel(), (positions + jitter).ravel(), s=3, alpha=0.3, c=colours, cmap="coolwarm")
    strip.axvline(0.0, color="grey", linewidth=0.8)
    strip.set_yticks(positions, names)
    strip.set(title=f"Per-row SHAP ({sample.shape[0]} rows)", xlabel="Contribution", ylabel="Feature")
    return _png(figure)


def residuals_png(y_true: ArrayLike, y_pred: ArrayLike) -> bytes:
    """Residuals against predictions (bias or heteroscedasticity) and their distribution."""
    truth, pred = paired_arrays(y_true, y_pred)
    if truth.size == 0:
        raise ValueError("residuals need at least one row")
    residual = truth - pred
    shown = _subsample(truth.size, MAX_POINTS)
    figure, (scatter, histogram) = _figure(10, 4, columns=2)
    scatter.scatter(pred[shown], residual[shown], s=4, alpha=0.4)
    scatter.axhline(0.0, color="grey", linestyle="--")
    scatter.set(title="Residuals vs prediction", xlabel="Predicted", ylabel="Actual - predicted")
    histogram.hist(residual, bins=50, color="tab:blue")
    histogram.set(title="Residual distribution", xlabel="Actual - predicted", ylabel="Rows")
    return _png(figure)


def confusion_matrix_png(y_codes: ArrayLike, y_prob: ArrayLike, classes: list[str]) -> bytes:
    """Row-normalised confusion matrix (recall on the diagonal) of the most probable class."""
    codes = np.asarray(y_codes, dtype=np.int64).ravel()
    predicted = np.asarray(y_prob, dtype=np.float64).argmax(axis=1)
    k = len(classes)
    if codes.size == 0 or codes.size != predicted.size or k == 0:
        raise ValueError("a confusion matrix needs as many labels as score rows, and the class names")
    counts = np.bincount(codes * k + predicted, minlength=k * k).reshape(k, k).astype(float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    figure, (axes,) = _figure(1.5 + 0.6 * k, 1.2 + 0.6 * k)
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            axes.text(j, i, f"{shares[i, j]:.2f}", ha="center", va="center", fontsize=8)
    axes.set_xticks(range(k), classes, rotation=45, ha="right")
    axes.set_yticks(range(k), classes)
    axes.set(title="Confusion matrix (share of each true class)", xlabel="Predicted", ylabel="True")
    return _png(figure)


def lines_png(x: list[str], series: dict[str, list[float]], ylabel: str, title: str,
              marked: dict[str, list[bool]] | None = None) -> bytes:
    """One line per series over categorical x (periods); `marked` points (e.g. a retrain) get a dot."""
    figure, (axes,) = _figure(8, 4)
    for index, (name, values) in enumerate(series.items()):
        (line,) = axes.plot(x, values, label=name, linewidth=1.6, linestyle=("-", "--", "-.", ":")[index % 4],
                            marker="o", markersize=2.5)
        flags = (marked or {}).get(name, [])
        points = [(xi, v) for xi, v, flag in zip(x, values, flags, strict=False) if flag]
        if points:
            axes.scatter(*zip(*points, strict=True), color=line.get_color(), s=28, zorder=3)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.tick_params(axis="x", labelrotation=45)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, ncol=2)
    return _png(figure)


def image_markdown(png: bytes, alt: str) -> str:
    """A PNG inline in markdown, which the Dagster UI renders on the asset page."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def drift_severity_png(per_feature: dict[str, dict], top: int = 20) -> bytes:
    """Each feature's drift as a multiple of its test's threshold (above 1: drifted), worst first.

    p-value tests drift below their threshold, distance tests above it; both become "times the bar"."""
    severity = {}
    for name, test in per_feature.items():
        score, threshold = test.get("score"), test.get("threshold")
        if score is None or not threshold:
            continue
        ratio = threshold / max(score, 1e-12) if "p_value" in str(test.get("stattest", "")) else score / threshold
        severity[name] = min(ratio, 10.0)
    ranked = sorted(severity.items(), key=lambda item: item[1], reverse=True)[:top][::-1]
    figure, (axes,) = _figure(7, max(2.5, 0.3 * len(ranked) + 1))
    if ranked:
        labels, values = zip(*ranked, strict=True)
        axes.barh(labels, values, color=["#c0392b" if v > 1 else "#7f8c8d" for v in values])
    axes.axvline(1.0, color="black", linewidth=1, linestyle="--")
    axes.set_xlabel("drift, in multiples of the test's threshold (capped at 10)")
    axes.set_title("Feature drift vs the training sample")
    return _png(figure)
