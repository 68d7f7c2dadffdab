"""Benchmark of the monitoring reports on the full 2013 year of the flights project.

Reference: the project's full-year point-in-time training set (``build_training_set`` on the
sources as validation hands them on: ~327k rows), scored by a quick LightGBM (``train_candidate``,
one trial of the default parameters, up to 100 trees, trained on January-October, early-stopped on
November) so it has a prediction column. Current: December's rows of the same set, served as one
month of requests in the layout of the flattened prediction log. Measured, best of N wall time
(and the process CPU time of that run, since this 2-core machine may be shared):

- ``drift_report`` against the 30k reference sample and against the full reference;
- ``calibrate_drift`` on the train split (the drift_report asset grades every report with it);
- Evidently's ``DataDriftPreset`` on the same sample, once, to show why the report does not use it;
- ``join_ground_truth``, ``live_performance``, ``offline_for_served`` + ``skew_report`` (what the
  skew_report asset runs) and ``ab_test_report`` on one month.

    .venv/bin/python benchmarks/monitoring.py [--repeats N] [--skip-preset]

Prints a table and writes ``benchmarks/results/monitoring.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/monitoring.py` from a checkout without an install
    sys.path.insert(0, str(ROOT))

from mlops_assets.contract import LOG_PREDICTION, PERIOD, PREDICTION_TIME, SPLIT  # noqa: E402
from mlops_assets.evaluation.metrics import binary_metrics  # noqa: E402
from mlops_assets.features.repository import model_features, offline_features, view_events  # noqa: E402
from mlops_assets.features.sources import prepare_all  # noqa: E402
from mlops_assets.ingestion.batches import coerce, read_source_file  # noqa: E402
from mlops_assets.monitoring import skew  # noqa: E402
from mlops_assets.monitoring.ab_test import ab_test_report  # noqa: E402
from mlops_assets.monitoring.checks import judge_drift  # noqa: E402
from mlops_assets.monitoring.drift import drift_report, reference_sample  # noqa: E402
from mlops_assets.monitoring.drift_calibration import calibrate_drift  # noqa: E402
from mlops_assets.monitoring.ground_truth import period_labels  # noqa: E402
from mlops_assets.monitoring.performance import join_ground_truth, live_performance  # noqa: E402
from mlops_assets.monitoring.serving_frame import in_period  # noqa: E402
from mlops_assets.partitions import example_period_bounds  # noqa: E402
from mlops_assets.project.loading import LoadedProject, load_project  # noqa: E402
from mlops_assets.project.spec import Project, TuningSpec  # noqa: E402
from mlops_assets.training.training_set import build_training_set  # noqa: E402
from mlops_assets.training.tuning import train_candidate  # noqa: E402

RESULTS_PATH = ROOT / "benchmarks" / "results" / "monitoring.json"
PROJECT_FILE = ROOT / "projects" / "flights" / "project.yaml"
CURRENT_MONTH, TRAIN_UNTIL, OFFLINE_MONTH = "2013-12", "2013-10", "2013-11"
TREES, SHADOW_TREES = 100, 30
DRIFT_GOAL_S = PERFORMANCE_GOAL_S = 2.0


def timed(fn: Callable[[], Any], repeats: int) -> tuple[dict[str, Any], Any]:
    """Best and median wall time of ``repeats`` runs, the CPU time of the best run, and the last result."""
    runs, result = [], None
    for _ in range(repeats):
        result = None
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    best = min(runs)
    return {"best_s": best[0], "cpu_s_of_best": best[1], "median_s": statistics.median(r[0] for r in runs),
            "runs_s": [r[0] for r in runs]}, result


def training_set(project: LoadedProject) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """The full-year training set and every view's events, built as the pipeline builds them: sources
    coerced to their declared schema (what validation hands on), prepared, views, point-in-time join."""
    spec = project.spec
    raw = {}
    for name, source in spec.sources.items():
        path = project.source_path(name)
        assert path is not None, f"source {name} has no embedded data"
        raw[name] = coerce(read_source_file(path, source, source.format), source)
    prepared = prepare_all(project, raw)
    views = {v: view_events(spec, v, prepared[spec.feature_views[v].source]) for v in spec.feature_views}
    return build_training_set(project, prepared, views), views


def scores(frame: pl.DataFrame, project: Project, features: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a quick candidate trained on Jan-Oct: all its trees, and its first trees (shadow)."""
    budget = TuningSpec(n_trials=1, timeout_seconds=600, max_rounds=TREES, early_stopping_rounds=TREES)
    quick = project.model_copy(update={"tuning": budget})
    train, valid = frame.filter(pl.col(PERIOD) <= TRAIN_UNTIL), frame.filter(pl.col(PERIOD) == OFFLINE_MONTH)
    model = train_candidate(train, valid, quick, features).model
    data = model.frame(frame.select(features).to_pandas())
    threads = os.cpu_count() or 1
    champion = model.booster.predict(data, num_threads=threads)
    return champion, model.booster.predict(data, num_iteration=SHADOW_TREES, num_threads=threads)


def served(rows: pl.DataFrame, project: Project, features: list[str], arm: str, version_: str,
           score: str) -> pl.DataFrame:
    """One month of rows as ``flatten_log`` hands the prediction log on: record fields, typed request
    fields, the served features, the period."""
    fields = list(project.request.fields)
    return rows.select(
        pl.format("req-{}", pl.int_range(pl.len())).alias("request_id"),
        pl.lit(0, dtype=pl.Int64).alias("instance"),
        (pl.col(PREDICTION_TIME) + pl.duration(seconds=3)).alias("timestamp"), PREDICTION_TIME,
        pl.col(score).alias(LOG_PREDICTION), pl.col(score).alias("probability"),
        (pl.col(score) >= project.threshold).alias("decision"),
        pl.lit(project.model_name).alias("model_name"),
        pl.lit(version_).alias("model_version"), pl.lit(arm).alias("arm"), pl.lit(2.0).alias("latency_ms"),
        *fields, *[f for f in features if f not in fields], PERIOD,
    )


def preset_seconds(sample: pl.DataFrame, current: pl.DataFrame, features: list[str],
                   categorical: tuple[str, ...]) -> dict[str, Any]:
    """Evidently's DataDriftPreset with its HTML on the same inputs: the road not taken, measured once."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = [*features, LOG_PREDICTION]
    numerical = [c for c in columns if sample.schema[c].is_numeric() and c not in categorical]
    definition = DataDefinition(numerical_columns=numerical,
                                categorical_columns=[c for c in columns if c not in numerical])
    wall, cpu = time.perf_counter(), time.process_time()
    current_data = Dataset.from_pandas(current.select(columns).to_pandas(), definition)
    reference_data = Dataset.from_pandas(sample.select(columns).to_pandas(), definition)
    html = Report([DataDriftPreset()]).run(current_data, reference_data).get_html_str(as_iframe=False)
    return {"seconds": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "html_bytes": len(html)}


def measure(repeats: int, skip_preset: bool) -> dict[str, Any]:
    """Every figure of the benchmark, in one process."""
    project = load_project(PROJECT_FILE)
    spec = project.spec
    frame, views = training_set(project)
    features = [f for f in model_features(spec) if f in frame.columns]
    categorical = tuple(spec.categorical)
    champion, shadow = scores(frame, spec, features)
    reference = frame.with_columns(pl.Series(LOG_PREDICTION, champion),
                                   pl.Series("shadow_prediction", shadow))
    start, end = example_period_bounds(spec, f"{CURRENT_MONTH}-01")
    current = in_period(reference, spec, start, end)
    serving = served(current, spec, features, "champion", "1", LOG_PREDICTION)
    rows = spec.monitoring.sample_rows
    sample_timing, sample = timed(lambda: reference_sample(reference, rows=rows), repeats)
    drift_sample, (summary, html) = timed(
        lambda: drift_report(sample, serving, features, categorical=categorical), repeats)
    drift_full, (full_summary, _) = timed(
        lambda: drift_report(reference, serving, features, categorical=categorical), repeats)
    train = reference.filter(pl.col(SPLIT) == "train").select(PERIOD, *features)
    monitoring = spec.monitoring
    calibration_timing, calibration = timed(
        lambda: calibrate_drift(train, features, monitoring.drift_warn_share, monitoring.drift_error_share,
                                categorical, rows), repeats)
    verdict = judge_drift(summary, calibration)
    preset = None if skip_preset else preset_seconds(sample, serving, features, categorical)
    keys, label = list(spec.examples.id), spec.label.name
    truth = period_labels(reference, spec, start, end)
    join, joined = timed(lambda: join_ground_truth(serving, truth, keys, label), repeats)
    nov = reference.filter(pl.col(PERIOD) == OFFLINE_MONTH)
    offline = binary_metrics(nov[label].to_numpy(), nov[LOG_PREDICTION].to_numpy(), spec.threshold)
    performance, live = timed(lambda: live_performance(joined, spec, offline), repeats)
    used = {v: views[v] for v in spec.used_views}
    recompute, recomputed = timed(
        lambda: skew.offline_for_served(serving, spec, used, offline_features), repeats)
    compared = [f for f in [*features, PREDICTION_TIME] if f in serving.columns]
    skew_timing, skewed = timed(
        lambda: skew.skew_report(serving, recomputed, skew.SERVED_KEYS, compared), repeats)
    shadow_log = pl.concat([serving, served(current, spec, features, "shadow", "2", "shadow_prediction")])
    paired = join_ground_truth(shadow_log, truth, keys, label)
    ab, ab_result = timed(lambda: ab_test_report(paired, spec), repeats)
    return {
        "inputs": {"project": spec.name, "reference_rows": reference.height, "current_rows": serving.height,
                   "columns_tested": len(features) + 1, "features": len(features),
                   "model": f"LightGBM, default parameters, up to {TREES} trees (train_candidate)"},
        "reference_sample": sample_timing,
        "drift_report_sample": drift_sample | _drift_facts(summary) | {"html_bytes": len(html)},
        "drift_report_full_reference": drift_full | _drift_facts(full_summary),
        "calibrate_drift_train_split": calibration_timing | {
            "train_rows": train.height, "periods": len(calibration.shares), "warn_at": calibration.warn_at,
            "error_at": calibration.error_at, "share_unusual": verdict.figures["share_unusual"],
            "verdict": verdict.severity if not verdict.passed else "pass"},
        "data_drift_preset_once": preset,
        "join_ground_truth": join | {"rows": joined.height},
        "live_performance": performance | {"labelled": live["coverage"]["labelled"],
                                           "live_auc": live["overall"]["auc"],
                                           "offline_auc_nov": offline["auc"]},
        "offline_for_served": recompute | {"rows": recomputed.height},
        "skew_report": skew_timing | {"features": skewed.height,
                                      "max_mismatch_rate": skewed.get_column("mismatch_rate").max()},
        "ab_test_report_paired": ab | {"pairs": ab_result["arms"]["champion"]["rows"],
                                       "recommendation": ab_result["recommendation"],
                                       "auc_difference": ab_result["difference"]["value"]},
    }


def _drift_facts(summary: Any) -> dict[str, Any]:
    return {"reference_rows": summary.reference_rows, "current_rows": summary.current_rows,
            "share_drifted": summary.share_drifted, "drifted": len(summary.drifted_features),
            "prediction_drift": summary.prediction_drift.get("score"), "sampled": summary.sampled}


def machine() -> dict[str, Any]:
    packages = ("evidently", "polars", "pandas", "numpy", "scipy", "lightgbm")
    return {"cpus": os.cpu_count(), "load_average_before": os.getloadavg(),
            "python": platform.python_version(), "platform": platform.platform(),
            "versions": {p: version(p) for p in packages}}


def table(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    d, f = results["drift_report_sample"], results["drift_report_full_reference"]
    p, inputs = results["data_drift_preset_once"], results["inputs"]
    rows = [
        ("inputs", f"reference {inputs['reference_rows']:,} rows, current {inputs['current_rows']:,}"
                   f" rows ({CURRENT_MONTH}), {inputs['columns_tested']} columns", ""),
        ("drift_report, 30k reference sample", f"{d['best_s']:.3f} s (cpu {d['cpu_s_of_best']:.3f} s), "
         f"{d['reference_rows']:,} x {d['current_rows']:,} rows, {d['drifted']} drifted",
         f"<= {DRIFT_GOAL_S} s"),
        ("drift_report, full reference", f"{f['best_s']:.3f} s (cpu {f['cpu_s_of_best']:.3f} s), "
         f"{f['reference_rows']:,} x {f['current_rows']:,} rows, {f['drifted']} drifted", ""),
    ]
    if p:
        rows.append(("DataDriftPreset + HTML (once, same sample)",
                     f"{p['seconds']:.3f} s (cpu {p['cpu_s']:.3f} s)", ""))
    c = results["calibrate_drift_train_split"]
    rows.append(("calibrate_drift, train split", f"{c['best_s']:.3f} s (cpu {c['cpu_s_of_best']:.3f} s), "
                 f"{c['train_rows']:,} rows, {c['periods']} periods; sample verdict {c['verdict']}", ""))
    for key, label in (("join_ground_truth", "join_ground_truth, one month"),
                       ("live_performance", "live_performance, one month"),
                       ("offline_for_served", "offline_for_served (skew), one month"),
                       ("skew_report", "skew_report, one month"),
                       ("ab_test_report_paired", "ab_test_report (shadow, 1000 resamples)")):
        goal = f"<= {PERFORMANCE_GOAL_S} s" if key == "live_performance" else ""
        figure = results[key]
        rows.append((label, f"{figure['best_s']:.3f} s (cpu {figure['cpu_s_of_best']:.3f} s)", goal))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-preset", action="store_true", help="do not time Evidently's DataDriftPreset")
    args = parser.parse_args()
    info = machine()
    results = {"machine": info, "repeats": args.repeats} | measure(args.repeats, args.skip_preset)
    results["machine"]["load_average_after"] = os.getloadavg()
    results["goals"] = {
        "drift_le_2s": results["drift_report_sample"]["best_s"] <= DRIFT_GOAL_S,
        "performance_le_2s": results["live_performance"]["best_s"] <= PERFORMANCE_GOAL_S,
    }
    for what, figure, goal in table(results):
        print(f"{what:<45} {figure:<75} {goal}")
    goals = ", ".join(f"{k}={'met' if ok else 'NOT met'}" for k, ok in results["goals"].items())
    loads = [" ".join(f"{x:.2f}" for x in info[k]) for k in ("load_average_before", "load_average_after")]
    print(f"goals: {goals}; load average (1, 5, 15 min) before {loads[0]}, after {loads[1]} "
          f"on {info['cpus']} CPUs")
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {RESULTS_PATH}")


if __name__ == "__main__":
    main()
