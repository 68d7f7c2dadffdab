"""Champion vs challenger on live traffic once labels arrive: is the challenger better, by how much, how sure.

Two designs come out of the serving experiment. *Split*: each request is answered by one arm, so
the arms hold different rows and are independent samples. *Shadow*: the challenger scores the very
requests the champion answers, so rows pair up and the comparison is far more sensitive (the
flight-to-flight noise cancels). The metric difference gets a bootstrap CI (vectorised: resamples
as a matrix of draw counts per chunk, shared by both arms when rows pair) and a two-sided
bootstrap p-value; the log-loss difference also gets a classical test (paired t-test
for shadow rows, Welch otherwise) as a cross-check that does not depend on resampling.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import stats

from mlops_assets.evaluation.metrics import HIGHER_IS_BETTER, LOG_LOSS_EPS, binary_metrics

CHAMPION, CHALLENGER, SHADOW = "champion", "challenger", "shadow"
LABEL, SCORE = "is_delayed", "probability"
PAIR_KEYS = ("request_id", "carrier", "flight", "origin", "scheduled_departure")
BOOTSTRAP_METRICS = ("auc", "log_loss", "brier", "accuracy", "recall", "precision")
RESAMPLES = 1000
CHUNK = 50
SHADOW_SUFFIX = "__shadow"


def _arm_rows(joined: pl.DataFrame, arm: str) -> pl.DataFrame:
    return joined.filter((pl.col("arm") == arm) & pl.col(LABEL).is_not_null() & pl.col(SCORE).is_not_null())


def _paired(champion: pl.DataFrame, shadow: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Champion and shadow rows of the same requests, aligned row by row (the label is the champion row's)."""
    keys = [k for k in PAIR_KEYS if k in champion.columns]
    extra = ["model_version"] if "model_version" in champion.columns else []
    pairs = champion.select(*keys, LABEL, SCORE, *extra).join(
        shadow.select(*keys, SCORE, *extra), on=keys, how="inner", validate="1:1", suffix=SHADOW_SUFFIX)
    left = pairs.select(LABEL, SCORE, *extra)
    right = pairs.select(LABEL, *[pl.col(c + SHADOW_SUFFIX).alias(c) for c in (SCORE, *extra)])
    return left, right


def _arms(joined: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, bool]:
    """(champion, challenger, paired): the split challenger arm if there is one, else the shadow arm."""
    missing = [c for c in ("arm", LABEL, SCORE) if c not in joined.columns]
    if missing:
        raise ValueError(f"joined frame lacks column(s): {', '.join(missing)}")
    champion = _arm_rows(joined, CHAMPION)
    if joined.get_column("arm").eq(CHALLENGER).any() or not joined.get_column("arm").eq(SHADOW).any():
        return champion, _arm_rows(joined, CHALLENGER), False
    left, right = _paired(champion, _arm_rows(joined, SHADOW))
    return left, right, True


@dataclass(frozen=True)
class Scored:
    """One arm's labels and scores, plus what every resample reuses: the order by score and, for each
    positive, where its group of equal scores starts and ends in that order."""

    truth: np.ndarray
    prob: np.ndarray
    order: np.ndarray
    negative: np.ndarray  # 1.0 where the row in score order is a negative
    positives: np.ndarray  # positions of the positives in score order
    tie_start: np.ndarray  # per positive: first position of its tie group
    tie_end: np.ndarray  # per positive: one past the last position of its tie group


def _arrays(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    truth, prob = frame.get_column(LABEL).to_numpy(), frame.get_column(SCORE).to_numpy()
    return truth.astype(np.float64), prob.astype(np.float64)


def scored(frame: pl.DataFrame) -> Scored:
    truth, prob = _arrays(frame)
    order = np.argsort(prob, kind="mergesort")
    sorted_prob, sorted_truth = prob[order], truth[order]
    first_of_group = np.r_[True, sorted_prob[1:] != sorted_prob[:-1]][: prob.size]
    starts = np.flatnonzero(first_of_group)
    group = np.cumsum(first_of_group) - 1
    positives = np.flatnonzero(sorted_truth == 1.0)
    ends = np.r_[starts[1:], prob.size]
    tie = group[positives]
    return Scored(truth, prob, order, 1.0 - sorted_truth, positives, starts[tie], ends[tie])


def _weighted_auc(weights: np.ndarray, arm: Scored) -> np.ndarray:
    """ROC AUC per row of ``weights`` (resamples x rows), from one cumulative sum of negative weight
    per resample: a positive beats the negatives below its tie group and half of those inside it."""
    ordered = weights[:, arm.order]
    below = np.zeros((weights.shape[0], weights.shape[1] + 1))
    np.cumsum(ordered * arm.negative, axis=1, out=below[:, 1:])
    positive_weight = ordered[:, arm.positives]
    beaten = 0.5 * (below[:, arm.tie_start] + below[:, arm.tie_end])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (positive_weight * beaten).sum(axis=1) / (positive_weight.sum(axis=1) * below[:, -1])


def weighted_metric(metric: str, weights: np.ndarray, arm: Scored, threshold: float) -> np.ndarray:
    """``metric`` under each row of resample weights; AUC by ranks, the others as ratios of weighted sums."""
    if metric == "auc":
        return _weighted_auc(weights, arm)
    truth, prob = arm.truth, arm.prob
    predicted = (prob >= threshold).astype(np.float64)
    clipped = np.clip(prob, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    numerators = {
        "log_loss": -(truth * np.log(clipped) + (1.0 - truth) * np.log1p(-clipped)),
        "brier": (prob - truth) ** 2, "accuracy": (predicted == truth).astype(np.float64),
        "recall": predicted * truth, "precision": predicted * truth,
    }  # fmt: skip
    denominators = {"recall": truth, "precision": predicted}
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ numerators[metric]) / (weights @ denominators.get(metric, np.ones_like(truth)))


def resample_counts(rng: np.random.Generator, size: int, rows: int) -> np.ndarray:
    """How many times each row is drawn in ``size`` bootstrap resamples (one per row of the result).

    One flat ``bincount`` over offset draws gives the exact bootstrap as weights, 5x faster than
    drawing Poisson(1) weights, and lets every metric be computed for all resamples at once.
    """
    draws = rng.integers(0, rows, size=(size, rows)) + (np.arange(size) * rows)[:, None]
    return np.bincount(draws.ravel(), minlength=size * rows).reshape(size, rows).astype(np.float64)


def bootstrap_difference(champion: pl.DataFrame, challenger: pl.DataFrame, paired: bool, metric: str,
                         threshold: float, resamples: int = RESAMPLES, seed: int = 7) -> np.ndarray:
    """Challenger minus champion in ``resamples`` bootstrap resamples (pairs resampled together if paired)."""
    rng = np.random.default_rng(seed)
    a, b = scored(champion), scored(challenger)
    out = []
    for start in range(0, resamples, CHUNK):
        size = min(CHUNK, resamples - start)
        w_a = resample_counts(rng, size, a.truth.size)
        w_b = w_a if paired else resample_counts(rng, size, b.truth.size)
        out.append(weighted_metric(metric, w_b, b, threshold) - weighted_metric(metric, w_a, a, threshold))
    return np.concatenate(out)


def _interval(draws: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """Percentile CI and two-sided bootstrap p-value (share of draws on the far side of 0, doubled)."""
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return math.nan, math.nan, math.nan
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    tail = min(np.count_nonzero(finite <= 0), np.count_nonzero(finite >= 0))
    return float(low), float(high), min(1.0, 2.0 * (int(tail) + 1) / (finite.size + 1))


def _row_log_loss(frame: pl.DataFrame) -> np.ndarray:
    truth, prob = _arrays(frame)
    clipped = np.clip(prob, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    return -(truth * np.log(clipped) + (1.0 - truth) * np.log1p(-clipped))


def log_loss_test(champion: pl.DataFrame, challenger: pl.DataFrame, paired: bool, alpha: float) -> dict:
    """Mean per-row log-loss difference (challenger - champion), paired t-test on shared rows, else Welch."""
    a, b = _row_log_loss(champion), _row_log_loss(challenger)
    result = {"test": "paired t-test" if paired else "Welch t-test", "mean_difference": math.nan,
              "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan}
    if min(a.size, b.size) < 2:
        return result | {"test": None}
    result["mean_difference"] = float(b.mean() - a.mean())
    if paired and np.array_equal(a, b):
        return result | {"ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
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
    better = diff > 0 if HIGHER_IS_BETTER[metric] else diff < 0
    if low > 0 or high < 0:
        return "promote challenger" if better else "keep champion"
    if not better:
        return "keep champion"
    half_width = (high - low) / 2
    more = math.ceil(sum(rows) * ((half_width / abs(diff)) ** 2 - 1))
    return f"inconclusive (need {max(more, 1):,} more labelled rows)"


def _arm_summary(frame: pl.DataFrame, threshold: float) -> dict:
    versions = []
    if "model_version" in frame.columns:
        versions = sorted({str(v) for v in frame.get_column("model_version").unique().to_list()})
    truth, prob = _arrays(frame)
    return binary_metrics(truth, prob, threshold) | {"rows": frame.height, "model_versions": versions}


def ab_test_report(joined: pl.DataFrame, metric: str = "auc", min_rows: int = 500, alpha: float = 0.05,
                   seed: int = 7, threshold: float = 0.5, resamples: int = RESAMPLES) -> dict:
    """Both arms' metrics, the ``metric`` difference with a bootstrap CI and p-value, and a recommendation."""
    if metric not in BOOTSTRAP_METRICS:
        raise ValueError(f"metric {metric!r} not supported; expected one of {', '.join(BOOTSTRAP_METRICS)}")
    start = time.perf_counter()
    champion, challenger, paired = _arms(joined)
    arms = {CHAMPION: _arm_summary(champion, threshold), CHALLENGER: _arm_summary(challenger, threshold)}
    difference = {"metric": metric, "value": arms[CHALLENGER][metric] - arms[CHAMPION][metric],
                  "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan}
    rows = (champion.height,) if paired else (champion.height, challenger.height)
    if champion.height and challenger.height:
        draws = bootstrap_difference(champion, challenger, paired, metric, threshold, resamples, seed)
        difference |= dict(zip(("ci_low", "ci_high", "p_value"), _interval(draws, alpha), strict=True))
    return {
        "design": "paired (shadow)" if paired else "split", "alpha": alpha, "resamples": resamples,
        "arms": arms,
        "difference": difference, "log_loss_test": log_loss_test(champion, challenger, paired, alpha),
        "recommendation": _recommendation(metric, rows, min_rows, difference),
        "seconds": time.perf_counter() - start,
    }


def ab_markdown(report: dict) -> str:
    """The recommendation first, then the evidence behind it."""
    diff, arms, ll = report["difference"], report["arms"], report["log_loss_test"]
    confidence = f"{1 - report['alpha']:.0%}"
    lines = [f"**A/B test ({report['design']})**: {report['recommendation']}", "",
             "| arm | rows | versions | " + diff["metric"] + " | log loss |", "|---|---|---|---|---|"]
    for name, arm in arms.items():
        lines.append(f"| {name} | {arm['rows']:,} | {', '.join(arm['model_versions'])} | "
                     f"{arm[diff['metric']]:.4f} | {arm['log_loss']:.4f} |")
    lines += ["", f"- {diff['metric']} difference (challenger - champion): {diff['value']:+.4f}, "
              f"{confidence} CI "
              f"[{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}], p = {diff['p_value']:.4f} "
              f"({report['resamples']} bootstrap resamples)"]
    if ll["test"]:
        lines.append(f"- log-loss difference: {ll['mean_difference']:+.4f}, {confidence} CI "
                     f"[{ll['ci_low']:+.4f}, {ll['ci_high']:+.4f}], p = {ll['p_value']:.4f} ({ll['test']})")
    return "\n".join([*lines, ""])
