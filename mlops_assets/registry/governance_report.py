"""The governance report (Practitioners Guide 3.7.2.2 "report"): the continuous-evaluation figures of
every monitored period side by side, so the trend across periods and versions is visible.

Each period's monitors report on their own; this puts them in one table, one row per period x
version x arm: how many predictions it served, its live metrics once labels arrived (computed as
`monitoring.performance` computes them, on the same rows), its offline test figures from the
registry, the worst slice, the period's drift and its alerts. Plain functions over frames and
records; the asset reads them and writes the outputs.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import polars as pl

from mlops_assets.contract import PERIOD
from mlops_assets.evaluation.metrics import (
    compute_metrics,
    higher_is_better,
    metric_columns,
    slice_table,
    worst_slice_gap,
)
from mlops_assets.monitoring.performance import (
    SHADOW,
    classes_of,
    score_column,
    slice_names,
    truth_and_scores,
)
from mlops_assets.project.spec import Project
from mlops_assets.registry.registry import CHAMPION
from mlops_assets.registry.review import answered_by, requested_changes

MIN_SLICE_ROWS = 10  # a slice with fewer labelled rows in a period is noise, not a trend
NO_PERIOD = "(none)"  # alerts not about one period (registry, runs, deliveries)


def offline_metrics(tags: dict[str, str]) -> dict[str, float]:
    """A version's offline test figures as the registry tags them (`metric.<name>`)."""
    return {k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")}


def _worst_slice(frame: pl.DataFrame, project: Project, truth: np.ndarray, scores: np.ndarray,
                 classes: list[str] | None, overall: dict[str, float], min_rows: int) -> dict:
    slices = [s for s in slice_names(project) if s in frame.columns and s != PERIOD]
    if not slices or frame.height == 0:
        return {"worst_slice": None, "worst_slice_metric": math.nan}
    table = slice_table(frame, slices, truth, scores, project.problem, project.threshold, classes)
    worst = worst_slice_gap(table, overall, project.primary_metric, min_rows)
    name = None if worst["slice"] is None else f"{worst['slice']}={worst['value']}"
    return {"worst_slice": name, "worst_slice_metric": float(worst["worst"])}


def period_rows(joined: pl.DataFrame, project: Project, period: str,
                offline: dict[str, dict[str, float]], min_slice_rows: int = MIN_SLICE_ROWS) -> list[dict]:
    """One row per (version, arm) of a period's logged predictions joined with their labels.

    Metrics are on rows with a score and a label, as the live-performance monitor measures; a shadow
    arm (a model scoring the same requests unseen) gets its own row, so a challenger's trend shows too.
    """
    label, score, metric = project.label.name, score_column(project), project.primary_metric
    rows: list[dict] = []
    for (version, arm), group in sorted(joined.group_by("model_version", "arm"), key=lambda g: (str(g[0][0]), str(g[0][1]))):
        version = str(version)
        scored = group.filter(pl.col(score).is_not_null())
        labelled = scored.filter(pl.col(label).is_not_null())
        row: dict = {PERIOD: period, "version": version, "arm": str(arm), "predictions": group.height,
                     "labelled": labelled.height, "coverage": labelled.height / scored.height if scored.height else 0.0}
        live: dict[str, float] = {}
        if labelled.height:
            classes = classes_of(labelled, project) if project.problem == "multiclass" else None
            truth, scores = truth_and_scores(labelled, project, classes)
            live = compute_metrics(project.problem, truth, scores, project.threshold, classes)
            row |= _worst_slice(labelled, project, truth, scores, classes, live, min_slice_rows)
        before = offline.get(version, {})
        for name in metric_columns(project.problem):
            row[f"live_{name}"] = float(live.get(name, math.nan))
            row[f"offline_{name}"] = float(before.get(name, math.nan))
        delta = row[f"live_{metric}"] - row[f"offline_{metric}"]
        row["worse_than_offline_by"] = -delta if higher_is_better(metric) else delta
        rows.append(row)
    return rows


def drift_summary(record: dict | None) -> dict:
    """The period's drift report in three figures (none when drift was not computed)."""
    if not record:
        return {"share_drifted": math.nan, "drifted_features": 0, "prediction_drifted": None}
    return {"share_drifted": float(record.get("share_drifted", math.nan)),
            "drifted_features": len(record.get("drifted_features", [])),
            "prediction_drifted": (record.get("prediction_drift") or {}).get("drifted")}


def _period_last(item: tuple[tuple[str, str, str], int]) -> tuple[bool, tuple[str, str, str]]:
    return item[0][0] == NO_PERIOD, item[0]


def alert_counts(alerts: list[dict]) -> pl.DataFrame:
    """Alerts per period (the monitors name it in their details), source and severity."""
    counts = Counter((str((a.get("details") or {}).get("period") or NO_PERIOD), a["source"], a["severity"])
                     for a in alerts)
    return pl.DataFrame([{PERIOD: p, "source": s, "severity": v, "alerts": n} for (p, s, v), n in sorted(counts.items(), key=_period_last)],
                        schema={PERIOD: pl.String, "source": pl.String, "severity": pl.String, "alerts": pl.Int64})


def report_table(rows: list[dict], drift: dict[str, dict], alerts: pl.DataFrame) -> pl.DataFrame:
    """Serving rows with their period's drift and alert counts, ordered by period then version."""
    if not rows:
        return pl.DataFrame()
    table = pl.DataFrame(rows, infer_schema_length=None)
    by_period = [{PERIOD: p, **drift_summary(drift.get(p)),
                  **{f"alerts_{s.lower()}": int(alerts.filter((pl.col(PERIOD) == p) & (pl.col("severity") == s))
                                                ["alerts"].sum()) for s in ("WARN", "ERROR")}}
                 for p in table[PERIOD].unique().to_list()]
    context = pl.DataFrame(by_period, schema_overrides={"prediction_drifted": pl.Boolean})
    return table.join(context, on=PERIOD, how="left").sort(PERIOD, pl.col("version").cast(pl.Int64), "arm")


def version_table(tags_by_version: dict[str, dict[str, str]], history: list[dict[str, str]],
                  metric: str) -> pl.DataFrame:
    """Every registered version: verdicts, offline figure, champion moves and any review in force."""
    records = []
    for version in sorted(tags_by_version, key=int):
        tags = tags_by_version[version]
        moves = [e for e in history if e["version"] == version and e["alias"] == CHAMPION]
        request = requested_changes(tags)
        review = ""
        if request:
            answer = answered_by(version, request["at"], history)
            review = (f"changes requested by {request['reviewer']}: {request['reason']} "
                      f"({'answered by version ' + answer if answer else 'unanswered'})")
        records.append({"version": version, "blessed": tags.get("blessed", ""), "infra_valid": tags.get("infra_valid", ""),
                        f"offline_{metric}": offline_metrics(tags).get(metric, math.nan),
                        "train_window": tags.get("train_window", ""),
                        "champion_moves": ", ".join(f"{e['action']} #{e['seq']} {e['at']}" for e in moves),
                        "review": review})
    return pl.DataFrame(records, schema_overrides={f"offline_{metric}": pl.Float64})


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return "-" if value is None or value == "" else str(value).replace("|", "/")


def markdown(frame: pl.DataFrame, columns: list[str]) -> str:
    """A frame's chosen columns as a markdown table (what the Dagster UI renders)."""
    if frame.height == 0:
        return "_nothing to report yet_"
    shown = [c for c in columns if c in frame.columns]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in shown) + " |" for row in frame.iter_rows(named=True)]
    return "\n".join(lines)


def summary_columns(metric: str) -> list[str]:
    return [PERIOD, "version", "arm", "predictions", "labelled", f"live_{metric}", f"offline_{metric}",
            "worse_than_offline_by", "worst_slice", "worst_slice_metric", "share_drifted", "prediction_drifted",
            "alerts_warn", "alerts_error"]


def trend_png(table: pl.DataFrame, metric: str) -> bytes:
    """Live metric per period, one line per version (offline test figure dashed), and the period's drift."""
    from mlops_assets.evaluation.plots import _figure, _png

    figure, (trend, drift) = _figure(11, 4.2, columns=2)
    periods = sorted(table[PERIOD].unique().to_list())
    position = {p: i for i, p in enumerate(periods)}
    versions = sorted(table["version"].unique().to_list(), key=int)
    color = {v: f"C{i % 10}" for i, v in enumerate(versions)}
    for (version, arm), group in sorted(table.group_by("version", "arm"), key=lambda g: (int(g[0][0]), g[0][1])):
        group = group.sort(PERIOD)
        trend.plot([position[p] for p in group[PERIOD]], group[f"live_{metric}"].to_list(),
                   "--" if arm == SHADOW else "-", marker="o", color=color[version], label=f"v{version} {arm} (live)")
    for version in versions:
        offline = table.filter(pl.col("version") == version)[f"offline_{metric}"][0]
        trend.axhline(offline, color=color[version], linestyle=":", linewidth=1, label=f"v{version} offline test")
    trend.set(title=f"Live {metric} by period and version", xlabel="period", ylabel=metric)
    trend.set_xticks(range(len(periods)), periods, rotation=45, ha="right")
    trend.legend(fontsize=7)
    per_period = table.group_by(PERIOD).agg(pl.col("share_drifted").first(), pl.col("alerts_warn").first(),
                                            pl.col("alerts_error").first()).sort(PERIOD)
    drift.bar(range(per_period.height), per_period["share_drifted"].fill_nan(0).to_list(), color="C1")
    for i, row in enumerate(per_period.iter_rows(named=True)):
        drift.annotate(f"{row['alerts_warn']}W {row['alerts_error']}E", (i, 0), ha="center", va="bottom", fontsize=7)
    drift.set(title="Share of drifted features (alerts: WARN/ERROR)", xlabel="period", ylabel="share", ylim=(0, 1))
    drift.set_xticks(range(per_period.height), per_period[PERIOD].to_list(), rotation=45, ha="right")
    return _png(figure)
