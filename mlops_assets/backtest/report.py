"""The backtest as people read it: a table per period and policy, a summary, and the plot."""

from __future__ import annotations

from mlops_assets.backtest.replay import BacktestResult
from mlops_assets.evaluation.evaluate import markdown_table
from mlops_assets.evaluation.plots import lines_png

REFERENCE = "every_period"


def reference_policy(result: BacktestResult) -> str:
    """Regret is measured against retraining every period when that policy is declared, else the first."""
    names = [o.policy for o in result.outcomes]
    return REFERENCE if REFERENCE in names else names[0]


def plot(result: BacktestResult) -> bytes:
    periods = sorted({o.period for o in result.outcomes})
    series: dict[str, list[float]] = {}
    marks: dict[str, list[bool]] = {}
    for outcome in sorted(result.outcomes, key=lambda o: o.period):
        series.setdefault(outcome.policy, []).append(outcome.live_metric)
        marks.setdefault(outcome.policy, []).append(outcome.retrained)
    return lines_png(periods, series, f"live {result.metric}", f"Live {result.metric} per period by retraining "
                     "policy (dots: retrained before the period)", marks)


def summary_markdown(result: BacktestResult) -> str:
    reference = reference_policy(result)
    rows = [[r["policy"], r["mean_live_metric"], r["retrains"], r["compute_seconds"], r["mean_regret"]]
            for r in result.summary(reference)]
    header = ["policy", f"mean live {result.metric}", "retrains", "compute s", f"regret vs {reference}"]
    return "\n".join(markdown_table(header, rows))


def periods_markdown(result: BacktestResult) -> str:
    policies = list(dict.fromkeys(o.policy for o in result.outcomes))
    cell = {(o.period, o.policy): f"{o.live_metric:.4f}{' R' if o.retrained else ''}" for o in result.outcomes}
    periods = sorted({o.period for o in result.outcomes})
    lines = markdown_table(["period", *policies], [[p, *(cell[p, q] for q in policies)] for p in periods])
    return "\n".join(lines) + "\n\nR: retrained (and passed the gate) before serving the period."


def outcomes_csv(result: BacktestResult) -> str:
    header = "period,policy,trained_through,retrained,live_metric,compute_seconds,reason"
    rows = [f"{o.period},{o.policy},{o.trained_through},{o.retrained},{o.live_metric:.6f},{o.compute_seconds:.3f},"
            f"\"{o.reason}\"" for o in result.outcomes]
    return "\n".join([header, *rows]) + "\n"
