"""Champion vs challenger on live traffic once labels arrive: is the challenger better, by how much, how sure.

Two designs come out of the serving experiment. *Split*: each request is answered by one arm, so
the arms hold different rows and are independent samples. *Shadow*: the challenger scores the very
requests the champion answers, so rows pair up (by request id and example id) and the comparison
is far more sensitive (the example-to-example noise cancels). The metric of the problem type
(binary AUC, log loss, ...; multiclass log loss, accuracy; regression RMSE, MAE) gets a bootstrap
CI of its difference (vectorised: resamples as a matrix of draw counts per chunk, shared by both
arms when rows pair) and a two-sided bootstrap p-value; the per-row loss (log loss, or squared
error for regression) also gets a classical test (paired t-test for shadow rows, Welch
otherwise) as a cross-check that does not depend on resampling.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import polars as pl

from mlops_assets.evaluation.metrics import LOG_LOSS_EPS, compute_metrics, higher_is_better
from mlops_assets.monitoring.performance import classes_of, score_column, truth_and_scores
from mlops_assets.project.spec import Project

CHAMPION, CHALLENGER, SHADOW = "champion", "challenger", "shadow"
BOOTSTRAP_METRICS = {"binary": ("auc", "log_loss", "brier", "accuracy", "recall", "precision"),
                     "multiclass": ("log_loss", "accuracy"), "regression": ("rmse", "mae")}
ROW_LOSS = {"binary": "log loss", "multiclass": "log loss", "regression": "squared error"}
RESAMPLES = 1000
CHUNK = 50
SHADOW_SUFFIX = "__shadow"


def _arm_rows(joined: pl.DataFrame, arm: str, label: str, score: str) -> pl.DataFrame:
    return joined.filter((pl.col("arm") == arm) & pl.col(label).is_not_null() & pl.col(score).is_not_null())


def pair_keys(project: Project, frame: pl.DataFrame) -> list[str]:
    """A request scored by two arms: the same request id and example id."""
    return [k for k in dict.fromkeys(["request_id", *project.examples.id]) if k in frame.columns]


def _paired(champion: pl.DataFrame, shadow: pl.DataFrame, keys: list[str], label: str,
            score: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Champion and shadow rows of the same requests, aligned row by row (the label is the champion row's)."""
    extra = ["model_version"] if "model_version" in champion.columns else []
    pairs = champion.select(*keys, label, score, *extra).join(
        shadow.select(*keys, score, *extra), on=keys, how="inner", validate="1:1", suffix=SHADOW_SUFFIX)
    left = pairs.select(label, score, *extra)
    right = pairs.select(label, *[pl.col(c + SHADOW_SUFFIX).alias(c) for c in (score, *extra)])
    return left, right


def _arms(joined: pl.DataFrame, project: Project) -> tuple[pl.DataFrame, pl.DataFrame, bool]:
    """(champion, challenger, paired): the split challenger arm if there is one, else the shadow arm."""
    label, score = project.label.name, score_column(project)
    missing = [c for c in ("arm", label, score) if c not in joined.columns]
    if missing:
        raise ValueError(f"joined frame lacks column(s): {', '.join(missing)}")
    champion = _arm_rows(joined, CHAMPION, label, score)
    if joined.get_column("arm").eq(CHALLENGER).any() or not joined.get_column("arm").eq(SHADOW).any():
        return champion, _arm_rows(joined, CHALLENGER, label, score), False
    shadow = _arm_rows(joined, SHADOW, label, score)
    left, right = _paired(champion, shadow, pair_keys(project, joined), label, score)
    return left, right, True


@dataclass(frozen=True)
class Scored:
    """One arm's labels and scores, plus what every resample reuses: per-row terms of the ratio metrics
    and, for AUC, the order by score and, per positive, where its group of equal scores starts and ends."""

    truth: np.ndarray
    scores: np.ndarray
    numerators: dict[str, np.ndarray]
    denominators: dict[str, np.ndarray]
    order: np.ndarray | None = None
    negative: np.ndarray | None = None  # 1.0 where the row in score order is a negative
    positives: np.ndarray | None = None  # positions of the positives in score order
    tie_start: np.ndarray | None = None  # per positive: first position of its tie group
    tie_end: np.ndarray | None = None  # per positive: one past the last position of its tie group


def _ratio_terms(problem: str, truth: np.ndarray, scores: np.ndarray,
                 threshold: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-row numerators (and non-unit denominators) whose weighted sums give each metric."""
    if problem == "regression":
        error = scores - truth
        return {"rmse": error**2, "mae": np.abs(error)}, {}
    if problem == "multiclass":
        codes = truth.astype(np.int64)
        true_prob = np.clip(scores[np.arange(codes.size), codes], LOG_LOSS_EPS, 1.0)
        return {"log_loss": -np.log(true_prob), "accuracy": (scores.argmax(axis=1) == codes).astype(np.float64)}, {}
    predicted = (scores >= threshold).astype(np.float64)
    clipped = np.clip(scores, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    numerators = {
        "log_loss": -(truth * np.log(clipped) + (1.0 - truth) * np.log1p(-clipped)),
        "brier": (scores - truth) ** 2, "accuracy": (predicted == truth).astype(np.float64),
        "recall": predicted * truth, "precision": predicted * truth,
    }  # fmt: skip
    return numerators, {"recall": truth, "precision": predicted}


def scored(truth: np.ndarray, scores: np.ndarray, problem: str, threshold: float) -> Scored:
    numerators, denominators = _ratio_terms(problem, truth, scores, threshold)
    if problem != "binary":
        return Scored(truth, scores, numerators, denominators)
    order = np.argsort(scores, kind="mergesort")
    sorted_prob, sorted_truth = scores[order], truth[order]
    first_of_group = np.r_[True, sorted_prob[1:] != sorted_prob[:-1]][: scores.size]
    starts = np.flatnonzero(first_of_group)
    group = np.cumsum(first_of_group) - 1
    positives = np.flatnonzero(sorted_truth == 1.0)
    ends = np.r_[starts[1:], scores.size]
    tie = group[positives]
    return Scored(truth, scores, numerators, denominators, order, 1.0 - sorted_truth, positives, starts[tie],
                  ends[tie])


def _weighted_auc(weights: np.ndarray, arm: Scored) -> np.ndarray:
    """ROC AUC per row of ``weights`` (resamples x rows), from one cumulative sum of negative weight
    per resample: a positive beats the negatives below its tie group and half of those inside it."""
    assert arm.order is not None and arm.negative is not None
    ordered = weights[:, arm.order]
    below = np.zeros((weights.shape[0], weights.shape[1] + 1))
    np.cumsum(ordered * arm.negative, axis=1, out=below[:, 1:])
    positive_weight = ordered[:, arm.positives]
    beaten = 0.5 * (below[:, arm.tie_start] + below[:, arm.tie_end])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (positive_weight * beaten).sum(axis=1) / (positive_weight.sum(axis=1) * below[:, -1])


def weighted_metric(metric: str, weights: np.ndarray, arm: Scored) -> np.ndarray:
    """``metric`` under each row of resample weights; AUC by ranks, the others as ratios of weighted sums."""
    if metric == "auc":
        return _weighted_auc(weights, arm)
    numerator = arm.numerators[metric]
    denominator = arm.denominators.get(metric, np.ones_like(numerator))
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (weights @ numerator) / (weights @ denominator)
    return np.sqrt(value) if metric == "rmse" else value


def resample_counts(rng: np.random.Generator, size: int, rows: int) -> np.ndarray:
    """How many times each row is drawn in ``size`` bootstrap resamples (one per row of the result).

    One flat ``bincount`` over offset draws gives the exact bootstrap as weights, 5x faster than
    drawing Poisson(1) weights, and lets every metric be computed for all resamples at once.
    """
    draws = rng.integers(0, rows, size=(size, rows)) + (np.arange(size) * rows)[:, None]
    return np.bincount(draws.ravel(), minlength=size * rows).reshape(size, rows).astype(np.float64)


def bootstrap_difference(champion: Scored, challenger: Scored, paired: bool, metric: str,
                         resamples: int = RESAMPLES, seed: int = 7) -> np.ndarray:
    """Challenger minus champion in ``resamples`` bootstrap resamples (pairs resampled together if paired)."""
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, resamples, CHUNK):
        size = min(CHUNK, resamples - start)
        w_a = resample_counts(rng, size, champion.truth.size)
        w_b = w_a if paired else resample_counts(rng, size, challenger.truth.size)
        out.append(weighted_metric(metric, w_b, challenger) - weighted_metric(metric, w_a, champion))
    return np.concatenate(out)


def _interval(draws: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """Percentile CI and two-sided bootstrap p-value (share of draws on the far side of 0, doubled)."""
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return math.nan, math.nan, math.nan
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    tail = min(np.count_nonzero(finite <= 0), np.count_nonzero(finite >= 0))
    return float(low), float(high), min(1.0, 2.0 * (int(tail) + 1) / (finite.size + 1))


def _row_loss(arm: Scored, problem: str) -> np.ndarray:
    return arm.numerators["rmse" if problem == "regression" else "log_loss"]


def loss_test(champion: Scored, challenger: Scored, paired: bool, alpha: float, problem: str) -> dict:
    """Mean per-row loss difference (challenger - champion), paired t-test on shared rows, else Welch.

    The loss is the log loss (classification) or the squared error (regression).
    """
    a, b = _row_loss(champion, problem), _row_loss(challenger, problem)
    result = {"test": "paired t-test" if paired else "Welch t-test", "loss": ROW_LOSS[problem],
              "mean_difference": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan}
    if min(a.size, b.size) < 2:
        return result | {"test": None}
    result["mean_difference"] = float(b.mean() - a.mean())
    if paired and np.array_equal(a, b):
        return result | {"ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    from scipy import stats  # 0.7 s of imports every process loading the definitions would pay

    test = stats.ttest_rel(b, a) if paired else stats.ttest_ind(b, a, equal_var=False)
    low, high = test.confidence_interval(1 - alpha)
    return result | {"ci_low": float(low), "ci_high": float(high), "p_value": float(test.pvalue)}


def _recommendation(metric: str, rows: tuple[int, ...], min_rows: int, difference: dict) -> str:
    """Promote only on a CI excluding 0 in the challenger's favour; say how many rows a hopeful trend needs.

    ``rows`` holds each arm's labelled rows, or the number of pairs once for a shadow test.
    """
    missing = sum(max(0, min_rows - n) for n in rows)
    diff, low, high = difference["value"], difference["ci_low"], difference["ci_high"]
    if missing or not math.isfinite(diff) or not math.isfinite(low):
        return f"inconclusive (need {max(missing, 1):,} more labelled rows)"
    better = diff > 0 if higher_is_better(metric) else diff < 0
    if low > 0 or high < 0:
        return "promote challenger" if better else "keep champion"
    if not better:
        return "keep champion"
    half_width = (high - low) / 2
    more = math.ceil(sum(rows) * ((half_width / abs(diff)) ** 2 - 1))
    return f"inconclusive (need {max(more, 1):,} more labelled rows)"


def _arm_summary(frame: pl.DataFrame, arm: Scored, project: Project, classes: list[str] | None) -> dict:
    versions = []
    if "model_version" in frame.columns:
        versions = sorted({str(v) for v in frame.get_column("model_version").unique().to_list()})
    metrics = compute_metrics(project.problem, arm.truth, arm.scores, project.threshold, classes)
    return metrics | {"rows": frame.height, "model_versions": versions}


def default_metric(project: Project) -> str:
    supported = BOOTSTRAP_METRICS[project.problem]
    return project.primary_metric if project.primary_metric in supported else supported[0]


def ab_test_report(joined: pl.DataFrame, project: Project, metric: str | None = None, min_rows: int = 500,
                   alpha: float = 0.05, seed: int = 7, resamples: int = RESAMPLES) -> dict:
    """Both arms' metrics, the ``metric`` difference with a bootstrap CI and p-value, and a recommendation."""
    metric = metric or default_metric(project)
    supported = BOOTSTRAP_METRICS[project.problem]
    if metric not in supported:
        raise ValueError(f"metric {metric!r} not supported for {project.problem}; expected one of "
                         f"{', '.join(supported)}")
    start = time.perf_counter()
    champion, challenger, paired = _arms(joined, project)
    classes = classes_of(joined, project) if project.problem == "multiclass" else None
    a, b = (scored(*truth_and_scores(f, project, classes), project.problem, project.threshold)
            for f in (champion, challenger))
    arms = {CHAMPION: _arm_summary(champion, a, project, classes),
            CHALLENGER: _arm_summary(challenger, b, project, classes)}
    difference = {"metric": metric, "value": arms[CHALLENGER][metric] - arms[CHAMPION][metric],
                  "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan}
    rows = (champion.height,) if paired else (champion.height, challenger.height)
    if champion.height and challenger.height:
        draws = bootstrap_difference(a, b, paired, metric, resamples, seed)
        difference |= dict(zip(("ci_low", "ci_high", "p_value"), _interval(draws, alpha), strict=True))
    return {
        "design": "paired (shadow)" if paired else "split", "alpha": alpha, "resamples": resamples,
        "problem": project.problem, "arms": arms, "difference": difference,
        "loss_test": loss_test(a, b, paired, alpha, project.problem),
        "recommendation": _recommendation(metric, rows, min_rows, difference),
        "seconds": time.perf_counter() - start,
    }


def ab_markdown(report: dict) -> str:
    """The recommendation first, then the evidence behind it."""
    diff, arms, loss = report["difference"], report["arms"], report["loss_test"]
    confidence = f"{1 - report['alpha']:.0%}"
    lines = [f"**A/B test ({report['design']})**: {report['recommendation']}", "",
             "| arm | rows | versions | " + diff["metric"] + " |", "|---|---|---|---|"]
    for name, arm in arms.items():
        lines.append(f"| {name} | {arm['rows']:,} | {', '.join(arm['model_versions'])} | {arm[diff['metric']]:.4f} |")
    lines += ["", f"- {diff['metric']} difference (challenger - champion): {diff['value']:+.4f}, "
              f"{confidence} CI "
              f"[{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}], p = {diff['p_value']:.4f} "
              f"({report['resamples']} bootstrap resamples)"]
    if loss["test"]:
        lines.append(f"- {loss['loss']} difference: {loss['mean_difference']:+.4f}, {confidence} CI "
                     f"[{loss['ci_low']:+.4f}, {loss['ci_high']:+.4f}], p = {loss['p_value']:.4f} ({loss['test']})")
    return "\n".join([*lines, ""])
