"""Serving efficiency of a period from the prediction log: traffic, latency per route, errors, versions.

A request is one (request_id, timestamp, endpoint) group of log records: a batch writes a record per
instance (and shadow ones), all with the request's status and server-side `latency_ms` (arrival to
the log record: scoring included, the fsync wait and sending not). A period holds the requests the
service answered in it (log timestamp, UTC), not those whose own time field falls in it: latency and
errors are about when the fleet served, so a replayed old month counts in the period it was replayed.
Percentiles interpolate linearly between order statistics (numpy's default). The error budget counts
server errors (5xx) only: a refused bad input (4xx) is the service working.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from mlops_assets.monitoring.checks import Verdict

KEYS = ("request_id", "timestamp", "endpoint")
SHADOW = "shadow"
PERCENTILES = {"p50_ms": 0.5, "p95_ms": 0.95, "p99_ms": 0.99}
TIMELINE_POINTS = 60


@dataclass(frozen=True)
class Efficiency:
    """One period's serving figures; the tables are what the asset shows."""

    requests: int
    predictions: int
    mean_rps: float
    busiest_minute: str | None
    busiest_minute_rps: float
    routes: pl.DataFrame
    statuses: pl.DataFrame
    versions: pl.DataFrame
    timeline: pl.DataFrame

    @property
    def server_error_rate(self) -> float:
        errors = self.statuses.filter(pl.col("status_class") == "5xx")["requests"].sum()
        return float(errors) / self.requests if self.requests else 0.0

    def figures(self) -> dict[str, float]:
        worst = float(self.routes["p99_ms"].max() or 0.0) if self.routes.height else 0.0
        return {"requests": float(self.requests), "predictions": float(self.predictions),
                "mean_rps": self.mean_rps, "busiest_minute_rps": self.busiest_minute_rps,
                "worst_route_p99_ms": worst, "server_error_rate": self.server_error_rate}


def request_frame(log: pl.DataFrame, start: datetime, end: datetime) -> pl.DataFrame:
    """One row per request answered in [start, end): request_id, timestamp, endpoint, status, latency_ms."""
    schema = {"request_id": pl.String, "timestamp": pl.Datetime("us", "UTC"), "endpoint": pl.String,
              "status": pl.Int64, "latency_ms": pl.Float64}
    if log.height == 0 or not {"endpoint", "status"} <= set(log.columns):
        return pl.DataFrame(schema=schema)
    latency = pl.col("latency_ms").cast(pl.Float64) if "latency_ms" in log.columns else pl.lit(None, pl.Float64)
    moment = pl.col("timestamp")
    served = log.filter((moment >= start) & (moment < end)).select(*KEYS, "status", latency.alias("latency_ms"))
    return served.group_by(KEYS, maintain_order=True).agg(pl.col("status").first(), pl.col("latency_ms").first())


def _routes(requests: pl.DataFrame) -> pl.DataFrame:
    latency = pl.col("latency_ms")
    return requests.group_by("endpoint").agg(
        pl.len().alias("requests"),
        *[latency.quantile(q, interpolation="linear").alias(name) for name, q in PERCENTILES.items()],
        latency.mean().alias("mean_ms"), latency.max().alias("max_ms"),
    ).sort("endpoint")


def _statuses(requests: pl.DataFrame) -> pl.DataFrame:
    classes = requests.with_columns(((pl.col("status") // 100).cast(pl.String) + "xx").alias("status_class"))
    total = max(requests.height, 1)
    return (classes.group_by("status_class").agg(pl.len().alias("requests"),
                                                 pl.col("status").unique().sort().cast(pl.String)
                                                 .str.join(", ").alias("statuses"))
            .with_columns((pl.col("requests") / total).alias("share")).sort("status_class"))


def _versions(log: pl.DataFrame, requests: pl.DataFrame) -> pl.DataFrame:
    """Predictions (status 200 records) per arm and model version, shadow included as its own arm."""
    needed = {"arm", "model_version"}
    if requests.height == 0 or not needed <= set(log.columns):
        return pl.DataFrame(schema={"arm": pl.String, "model_version": pl.String, "predictions": pl.UInt32})
    ok = log.join(requests.select(KEYS), on=list(KEYS), how="semi").filter(pl.col("status") == 200)
    return (ok.group_by("arm", pl.col("model_version").cast(pl.String)).agg(pl.len().alias("predictions"))
            .sort("arm", "model_version"))


def _timeline(requests: pl.DataFrame) -> pl.DataFrame:
    """p50 and p99 per route over time, in at most ~TIMELINE_POINTS whole-minute buckets (the plot)."""
    if requests.height == 0:
        return pl.DataFrame(schema={"at": pl.Datetime("us", "UTC"), "endpoint": pl.String,
                                    "p50_ms": pl.Float64, "p99_ms": pl.Float64})
    first, last = requests["timestamp"].min(), requests["timestamp"].max()
    minutes = max(1, int((last - first).total_seconds() // 60 // TIMELINE_POINTS) + 1)  # type: ignore[operator]
    latency = pl.col("latency_ms")
    return (requests.group_by(pl.col("timestamp").dt.truncate(f"{minutes}m").alias("at"), "endpoint")
            .agg(latency.quantile(0.5, interpolation="linear").alias("p50_ms"),
                 latency.quantile(0.99, interpolation="linear").alias("p99_ms")).sort("at", "endpoint"))


def summarise(log: pl.DataFrame, start: datetime, end: datetime) -> Efficiency:
    """The period's traffic (average over the first to the last request, at least 1 s; and the busiest
    wall-clock minute), latency per route, requests by status class and predictions per model version."""
    requests = request_frame(log, start, end)
    versions = _versions(log, requests)
    predictions = int(versions.filter(pl.col("arm") != SHADOW)["predictions"].sum()) if versions.height else 0
    if requests.height == 0:
        return Efficiency(0, 0, 0.0, None, 0.0, _routes(requests), _statuses(requests), versions,
                          _timeline(requests))
    span = (requests["timestamp"].max() - requests["timestamp"].min()).total_seconds()  # type: ignore[operator]
    per_minute = requests.group_by(pl.col("timestamp").dt.truncate("1m").alias("minute")).len().sort(
        ["len", "minute"], descending=[True, False])
    minute, count = per_minute.row(0)
    return Efficiency(requests.height, predictions, requests.height / max(span, 1.0), minute.isoformat(),
                      count / 60, _routes(requests), _statuses(requests), versions, _timeline(requests))


def judge_budget(summary: Efficiency, p99_ms: float, error_rate: float) -> Verdict:
    """ERROR when a route's p99 latency or the share of server errors is over the declared budget."""
    figures = {**summary.figures(), "budget_p99_ms": p99_ms, "budget_error_rate": error_rate}
    if summary.requests == 0:
        return Verdict(True, "ERROR", "no requests served in the period", figures)
    over = summary.routes.filter(pl.col("p99_ms") > p99_ms)
    problems = [f"{r['endpoint']} p99 {r['p99_ms']:.2f} ms over the budget of {p99_ms:g} ms"
                for r in over.iter_rows(named=True)]
    if summary.server_error_rate > error_rate:
        problems.append(f"server error rate {summary.server_error_rate:.4f} over the budget of {error_rate:g}")
    if problems:
        return Verdict(False, "ERROR", "; ".join(problems), figures)
    return Verdict(True, "ERROR", f"within budget: every route's p99 <= {p99_ms:g} ms, server errors "
                                  f"{summary.server_error_rate:.4f} <= {error_rate:g}", figures)


def markdown(summary: Efficiency) -> str:
    """The summary tables for the asset page."""
    lines = [f"**{summary.requests} requests**, {summary.predictions} predictions; {summary.mean_rps:.2f} req/s on "
             f"average, {summary.busiest_minute_rps:.2f} req/s in the busiest minute ({summary.busiest_minute}).",
             "", "| route | requests | p50 ms | p95 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['endpoint']} | {r['requests']} | {_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} | {_ms(r['p99_ms'])} "
              f"| {_ms(r['max_ms'])} |" for r in summary.routes.iter_rows(named=True)]
    lines += ["", "| status class | requests | share | statuses |", "|---|---:|---:|---|"]
    lines += [f"| {r['status_class']} | {r['requests']} | {r['share']:.4f} | {r['statuses']} |"
              for r in summary.statuses.iter_rows(named=True)]
    lines += ["", "| arm | model version | predictions |", "|---|---|---:|"]
    lines += [f"| {r['arm']} | {r['model_version']} | {r['predictions']} |"
              for r in summary.versions.iter_rows(named=True)]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
