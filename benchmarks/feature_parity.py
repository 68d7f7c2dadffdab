"""Online/offline feature parity: one month of flights replayed through the real service, feature by feature.

1. The offline store is built from data (typed `data/*.parquet` -> `prepare_all` -> `view_events`) and
   the training set (`build_training_set`) gives every labelled flight's features as of its
   prediction time.
2. A small LightGBM trained on Jan-Apr is registered as champion in a throwaway MLflow registry;
   every view's events known *before* the month's first prediction time go into an `OnlineStore`.
3. The real FastAPI app (`create_app`, in-process through `TestClient`) then replays the month in
   prediction-time order, one slice per distinct prediction time (flights' are whole minutes):
   first every source event that became known (to any view) at or before that time is pushed with
   `POST /v1/events/<source>` -- a flight once when it departs, with its arrival fields still
   unknown (null), and again when its arrival becomes known -- then the slice's flights are asked
   for with `POST /v1/predict/batch`.
4. The served features (the `features` of the prediction-log records, i.e. what the model got from
   the online path) are compared with the training set's values, tolerance 1e-9 relative (absolute
   below 1), null equal to null.

    .venv/bin/python benchmarks/feature_parity.py [--month 2013-06] [--days N] [--unlabelled]

Prints the replay's figures, per-feature mismatch counts, a block of goals, and last the line
`parity: rows=N mismatches=M`.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
from _common import flights_project, machine_line, percentile, prepared_and_events, print_goals, same_value

from mlops_assets.contract import LOG_FEATURES, PERIOD, PREDICTION_TIME
from mlops_assets.features.event_codec import view_dtypes
from mlops_assets.features.online_store import OnlineStore
from mlops_assets.features.repository import is_static, model_features, offline_features, view_feature_names
from mlops_assets.project.loading import LoadedProject
from mlops_assets.project.spec import Project
from mlops_assets.scoring_model import ScoringModel
from mlops_assets.training.training_set import build_training_set, examples_frame

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

TRAIN_MONTHS = ("2013-01", "2013-02", "2013-03", "2013-04")
DEPARTURE_COLUMN = "dep_delay"
SKEW_GOAL = 0.01
MAX_SHOWN = 12
STAGE = "__stage"
ROW = "__row"
BULK_SPAN = timedelta(days=7)
MICROSECOND = timedelta(microseconds=1)


@dataclass
class Replay:
    """What the replay sent and got: request ids per row, push and predict figures."""

    request_of_row: dict[int, tuple[str, int]] = field(default_factory=dict)
    pushed: int = 0
    accepted: int = 0
    duplicates: int = 0
    unused: int = 0
    push_calls: list[float] = field(default_factory=list)
    predict_calls: list[float] = field(default_factory=list)
    slices: int = 0
    wall_s: float = 0.0
    bulk: tuple[int, int, float, float] = (0, 0, 0.0, 0.0)  # events, calls, push seconds, next-request seconds


def small_model(rows: pl.DataFrame, features: list[str], label: str) -> ScoringModel:
    """A small LightGBM (pandas categoricals with frozen levels), as the serving test fixtures train it."""
    import lightgbm as lgb
    import pandas as pd

    text = [f for f in features if rows.schema[f] == pl.String]
    levels = {c: sorted(rows[c].drop_nulls().unique().to_list()) for c in text}
    data = pd.DataFrame({f: pd.Categorical(rows[f].to_list(), categories=levels[f]) if f in levels
                         else rows[f].cast(pl.Float64).to_numpy() for f in features})
    params = {"objective": "binary", "verbose": -1, "seed": 7, "num_leaves": 31, "min_data_in_leaf": 50,
              "num_threads": 1, "learning_rate": 0.1}
    booster = lgb.train(params, lgb.Dataset(data, label=rows[label].to_numpy(), categorical_feature=text),
                        num_boost_round=40)
    return ScoringModel(booster, features, levels, "binary")


def register_champion(root: Path, tracking_uri: str, model_name: str, model: ScoringModel) -> str:
    """Log the model as the trainer does (pyfunc) into a throwaway SQLite registry; alias it champion."""
    import mlflow
    from mlflow import MlflowClient

    from mlops_assets.registry.registry import move_alias
    from mlops_assets.scoring_model import ScoringPyfunc

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment_id = mlflow.create_experiment("feature_parity", artifact_location=(root / "artifacts").as_uri())
    requirements = [f"{p}=={version(p)}" for p in ("mlflow", "lightgbm", "pandas", "numpy", "cloudpickle")]
    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=ScoringPyfunc(model), pip_requirements=requirements)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.create_registered_model(model_name)
    registered = client.create_model_version(model_name, info.model_uri, run_id=run.info.run_id,
                                             tags={"blessed": "true", "infra_valid": "true"})
    move_alias(client, model_name, "champion", str(registered.version), "promote", "feature_parity benchmark",
               "the service serves only governed versions")
    return str(registered.version)


def write_online_store(project: Project, events: dict[str, pl.DataFrame], path: Path, before: datetime) -> int:
    """Every view's events known before `before` (static views whole), as the online_store asset writes them."""
    store, rows = OnlineStore(path), 0
    for name, frame in events.items():
        known_at = project.feature_views[name].known_at
        kept = frame if known_at is None else frame.filter(pl.col(known_at) < before)
        rows += store.write_view_events(project, name, kept, None)
    return rows


def _iso(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def push_stages(project: Project, prepared: dict[str, pl.DataFrame], start: datetime,
                end: datetime) -> list[tuple[int, str, dict[str, object]]]:
    """(known-at µs, source, JSON event) for every moment in [start, end] a source row becomes known to a view.

    A row is sent once per distinct known-at time of the views reading its source, holding only what
    is known by then: a column that only views not yet reached read (e.g. `arr_delay`, or the
    arrival time itself at departure) is null. In time order, ties in source row order (as offline).
    """
    out: list[tuple[int, str, dict[str, object]]] = []
    for source in dict.fromkeys(v.source for v in project.feature_views.values()):
        views = [n for n, v in project.feature_views.items() if v.source == source and v.known_at]
        if not views:
            continue
        needs = {v: list(view_dtypes(project, v)) for v in views}
        required = list(dict.fromkeys(c for v in project.feature_views if project.feature_views[v].source == source
                                      for c in view_dtypes(project, v)))
        frame = prepared[source].with_row_index(ROW).select(ROW, *required)
        known = {v: project.feature_views[v].known_at for v in views}
        parts = [frame.filter(pl.col(k).is_between(start, end)).with_columns(pl.col(k).alias(STAGE))
                 for k in dict.fromkeys(known.values())]
        staged = pl.concat(parts).unique([ROW, STAGE], keep="first").sort(STAGE, ROW)
        masked = []
        for column in required:
            readers = [v for v in views if column in needs[v]]
            if not readers:
                masked.append(pl.col(column))
                continue
            now_known = pl.any_horizontal([(pl.col(known[v]) <= pl.col(STAGE)).fill_null(False) for v in readers])
            masked.append(pl.when(now_known).then(pl.col(column)).otherwise(None).alias(column))
        staged = staged.select(pl.col(STAGE).dt.epoch("us"), *masked)
        for row in staged.iter_rows(named=True):
            at = row.pop(STAGE)
            out.append((at, source, {k: _iso(v) for k, v in row.items()}))
    out.sort(key=lambda s: s[0])  # stable: sources keep their row order within a time
    return out


def request_instances(project: Project, rows: pl.DataFrame) -> list[dict[str, object]]:
    """The rows as a client sends them: request fields only, datetimes as ISO 8601 with offset."""
    fields = list(project.request.fields)
    return [{k: _iso(v) for k, v in r.items()} for r in rows.select(fields).iter_rows(named=True)]


def _runs(items: list[tuple[int, str, dict[str, object]]], size: int) -> Iterator[tuple[str, list[dict]]]:
    """Consecutive events of one source, at most `size` at a time, in order."""
    start = 0
    while start < len(items):
        source, stop = items[start][1], start
        while stop < len(items) and stop - start < size and items[stop][1] == source:
            stop += 1
        yield source, [e for _, _, e in items[start:stop]]
        start = stop


def replay(client: TestClient, times_us: list[int], instances: list[dict[str, object]],
           stages: list[tuple[int, str, dict[str, object]]], max_batch: int, push_batch: int) -> Replay:
    """Push what became known, then predict, one prediction time after the other."""
    out, next_stage, row = Replay(), 0, 0
    started = time.perf_counter()
    while row < len(times_us):
        t, end = times_us[row], row
        while end < len(times_us) and times_us[end] == t:
            end += 1
        pending = []
        while next_stage < len(stages) and stages[next_stage][0] <= t:
            pending.append(stages[next_stage])
            next_stage += 1
        for source, events in _runs(pending, push_batch):
            began = time.perf_counter()
            response = client.post(f"/v1/events/{source}", json={"events": events})
            out.push_calls.append(time.perf_counter() - began)
            if response.status_code != 200:
                raise RuntimeError(f"push to {source} refused: {response.status_code} {response.text[:500]}")
            body = response.json()
            out.pushed += len(events)
            out.accepted += body["accepted"]
            out.duplicates += body["duplicates"]
            out.unused += body["unused"]
        for first in range(row, end, max_batch):
            chunk = list(range(first, min(end, first + max_batch)))
            began = time.perf_counter()
            response = client.post("/v1/predict/batch",
                                   json={"instances": [instances[i] for i in chunk]})
            out.predict_calls.append(time.perf_counter() - began)
            if response.status_code != 200:
                raise RuntimeError(f"prediction refused: {response.status_code} {response.text[:500]}")
            request_id = response.json()["request_id"]
            for position, i in enumerate(chunk):
                out.request_of_row[i] = (request_id, position)
        out.slices += 1
        row = end
    out.wall_s = time.perf_counter() - started
    return out


def bulk_push(client: TestClient, stages: list[tuple[int, str, dict[str, object]]], instance: dict[str, object],
              push_batch: int) -> tuple[int, int, float, float]:
    """After the replay: the next days' events in full batches, then one prediction (which applies them)."""
    calls, began = 0, time.perf_counter()
    for source, events in _runs(sorted(stages, key=lambda s: s[1]), push_batch):  # per source, in time order
        response = client.post(f"/v1/events/{source}", json={"events": events})
        if response.status_code != 200:
            raise RuntimeError(f"push to {source} refused: {response.status_code} {response.text[:500]}")
        calls += 1
    pushed_s, began = time.perf_counter() - began, time.perf_counter()
    response = client.post("/v1/predict", json=instance)
    if response.status_code != 200:
        raise RuntimeError(f"prediction refused: {response.status_code} {response.text[:500]}")
    return len(stages), calls, pushed_s, time.perf_counter() - began


def logged_features(log_dir: Path) -> dict[tuple[str, int], dict[str, object]]:
    """(request id, instance) -> the features the model was given, from every prediction-log record."""
    out = {}
    for path in sorted(log_dir.glob("date=*/part-*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("status") == 200 and record.get("arm") != "shadow":
                out[record["request_id"], int(record["instance"])] = record[LOG_FEATURES]
    return out


def departure_features(project: Project) -> list[str]:
    """The features of the windowed views that aggregate departure delays."""
    return [f for n, v in project.feature_views.items() if n in project.used_views and not is_static(project, n)
            and any(a.column == DEPARTURE_COLUMN for a in v.aggregations) for f in view_feature_names(project, n)]


def view_of(project: Project) -> dict[str, str]:
    names = {f: "(request)" for f in project.features}
    for name in project.used_views:
        names.update({f: name for f in view_feature_names(project, name)})
    return names


def compare(project: Project, month: pl.DataFrame, served: dict[tuple[str, int], dict[str, object]],
            request_of_row: dict[int, tuple[str, int]]) -> tuple[Counter, list[set[str]], list[tuple]]:
    """Mismatches per feature, the mismatching features of each row, and a few examples."""
    features = model_features(project)
    ids = list(project.examples.id)
    expected = month.select(*features).to_dicts()
    keys = month.select(*ids, PREDICTION_TIME).rows()
    counts: Counter = Counter({f: 0 for f in features})
    per_row: list[set[str]] = []
    examples: list[tuple] = []
    for i, offline in enumerate(expected):
        record = served.get(request_of_row[i])
        bad = set(features) if record is None else {f for f in features if not same_value(record.get(f), offline[f])}
        for f in bad:
            counts[f] += 1
            if len(examples) < MAX_SHOWN:
                examples.append((f, keys[i], None if record is None else record.get(f), offline[f]))
        per_row.append(bad)
    return counts, per_row, examples


def print_counts(project: Project, counts: Counter, rows: int) -> None:
    views = view_of(project)
    print(f"\n{'feature':<42}{'view':<34}{'mismatches':>11}")
    for feature, n in counts.items():
        print(f"{feature:<42}{views.get(feature, '?'):<34}{n:>11,}{'' if n == 0 else f'  ({n / rows:.2%})'}")


def run(project: LoadedProject, month_label: str, max_batch: int, push_batch: int,
        days: int | None = None, unlabelled: bool = False) -> tuple[int, int]:
    """The whole benchmark; returns (rows, mismatches)."""
    from fastapi.testclient import TestClient

    from mlops_assets.serving.app import create_app
    from mlops_assets.serving.config import ServingConfig

    spec = project.spec
    print(f"feature parity, flights {month_label}; {machine_line()}")
    started = time.perf_counter()
    prepared, events = prepared_and_events(project)
    training = build_training_set(project, prepared, events)
    rows = training
    if unlabelled:  # every flight of the month, cancelled and diverted ones too (no label, e.g. no tail number)
        rows = offline_features(spec, examples_frame(project, prepared, labelled=False), events)
    month = rows.filter(pl.col(PERIOD) == month_label).sort(PREDICTION_TIME, maintain_order=True)
    if month.height == 0:
        raise SystemExit(f"no labelled flights in {month_label}; periods: {sorted(training[PERIOD].unique())}")
    if days is not None:
        month = month.filter(pl.col(PREDICTION_TIME) < month[PREDICTION_TIME].min() + timedelta(days=days))
    first, last = month[PREDICTION_TIME].min(), month[PREDICTION_TIME].max()
    print(f"offline: {training.height:,} training-set rows, {month.height:,} {'examples' if unlabelled else 'rows'} "
          f"in {month_label} "
          f"(prediction times {first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M} UTC), "
          f"built in {time.perf_counter() - started:.1f} s")
    features = model_features(spec)
    train_rows = training.filter(pl.col(PERIOD).is_in(TRAIN_MONTHS))
    with tempfile.TemporaryDirectory(prefix="feature_parity_") as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        model = small_model(train_rows, features, spec.label.name)
        champion = register_champion(root, f"sqlite:///{root / 'mlflow.db'}", spec.model_name, model)
        print(f"champion: {spec.model_name} v{champion}, LightGBM on {train_rows.height:,} rows of "
              f"{TRAIN_MONTHS[0]}..{TRAIN_MONTHS[-1]}, {len(features)} features "
              f"({time.perf_counter() - began:.1f} s)")
        store_path = root / "state" / "online_store.db"
        stored = write_online_store(spec, events, store_path, first)
        stages = push_stages(spec, prepared, first, last)
        by_source = Counter(s for _, s, _ in stages)
        print(f"online store: {stored:,} events known before {first:%Y-%m-%d %H:%M} UTC; to push during the "
              f"month: {len(stages):,} events ({', '.join(f'{s} {n:,}' for s, n in by_source.items())})")
        config = ServingConfig(state_dir=root / "state", project_path=project.path,
                               tracking_uri=f"sqlite:///{root / 'mlflow.db'}", poll_seconds=3600.0,
                               log_flush_seconds=0.2, log_dir=root / "log", online_store_path=store_path,
                               max_batch=max_batch, max_events=push_batch)
        times_us = month[PREDICTION_TIME].dt.epoch("us").to_list()
        instances = request_instances(spec, month)
        with TestClient(create_app(config)) as client:
            ready = client.get("/ready")
            if ready.status_code != 200:
                raise RuntimeError(f"service not ready: {ready.text}")
            result = replay(client, times_us, instances, stages, max_batch, push_batch)
            after = push_stages(spec, prepared, last + MICROSECOND, last + BULK_SPAN)
            result.bulk = bulk_push(client, after, instances[-1], push_batch)
        served = logged_features(config.prediction_log_dir)
    report_replay(result, month.height, len(served))
    counts, per_row, examples = compare(spec, month, served, result.request_of_row)
    return summarize(spec, month.height, counts, per_row, examples, result)


def report_replay(result: Replay, rows: int, logged: int) -> None:
    push_s, predict_s = sum(result.push_calls), sum(result.predict_calls)
    print(f"\nreplay: {result.slices:,} prediction-time slices in {result.wall_s:.1f} s; "
          f"{len(result.predict_calls):,} POST /v1/predict/batch for {rows:,} flights ({predict_s:.1f} s, "
          f"p50 {percentile(result.predict_calls, 50) * 1e3:.2f} ms, "
          f"p99 {percentile(result.predict_calls, 99) * 1e3:.2f} ms per call); {logged:,} log records")
    if result.push_calls:
        print(f"push through HTTP: {result.pushed:,} events in {len(result.push_calls):,} POST /v1/events calls "
              f"({result.pushed / len(result.push_calls):.1f} events/call), {push_s:.1f} s -> "
              f"{result.pushed / push_s:,.0f} events/s; per call p50 {percentile(result.push_calls, 50) * 1e3:.2f} ms, "
              f"p99 {percentile(result.push_calls, 99) * 1e3:.2f} ms; accepted {result.accepted:,}, duplicates "
              f"{result.duplicates:,}, unused {result.unused:,}")
    events, calls, pushed_s, apply_s = result.bulk
    if calls:
        print(f"push through HTTP in full batches (the events of the {BULK_SPAN.days} days after the last prediction time, after the replay): "
              f"{events:,} events in {calls:,} calls, {pushed_s:.2f} s -> {events / pushed_s:,.0f} events/s; the next "
              f"POST /v1/predict, which applies them to the in-memory windows, took {apply_s * 1e3:.0f} ms")


def summarize(spec: Project, rows: int, counts: Counter, per_row: list[set[str]], examples: list[tuple],
              result: Replay) -> tuple[int, int]:
    print_counts(spec, counts, rows)
    mismatches = sum(counts.values())
    departure = set(departure_features(spec))
    skewed = sum(1 for bad in per_row if bad & departure)
    any_bad = sum(1 for bad in per_row if bad)
    if examples:
        print(f"\nfirst {len(examples)} mismatches (feature, example id + prediction time, served, offline):")
        for feature, key, served, offline in examples:
            print(f"  {feature}: {key}: served {served!r}, offline {offline!r}")
    skew = skewed / rows
    print(f"\nrows with any mismatch: {any_bad:,} of {rows:,} ({any_bad / rows:.3%}); with a mismatch on the "
          f"{len(departure)} departure-delay features: {skewed:,} ({skew:.3%})")
    push_rate = result.pushed / sum(result.push_calls) if result.push_calls else 0.0
    events, calls, pushed_s, _ = result.bulk
    bulk = f"; in full batches ({events / max(calls, 1):,.0f} events/call): {events / pushed_s:,.0f} events/s" if calls else ""
    print(f"push throughput through HTTP: {push_rate:,.0f} events/s as replayed "
          f"({result.pushed / max(len(result.push_calls), 1):.1f} events/call){bulk}")
    print_goals([
        ("served features == offline values (1e-9, null == null)", mismatches == 0),
        (f"requests with a departure-delay mismatch <= {SKEW_GOAL:.0%}", skew <= SKEW_GOAL),
    ])
    return rows, mismatches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--month", default="2013-06", help="period to replay, YYYY-MM (default 2013-06)")
    parser.add_argument("--max-batch", type=int, default=100, help="instances per /v1/predict/batch call")
    parser.add_argument("--push-batch", type=int, default=1000, help="events per /v1/events call at most")
    parser.add_argument("--days", type=int, default=None, help="replay only the month's first N days (quick check)")
    parser.add_argument("--unlabelled", action="store_true",
                        help="replay every flight of the month, also those without a label (compared with "
                             "offline_features over examples_frame(labelled=False))")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    rows, mismatches = run(flights_project(), args.month, args.max_batch, args.push_batch, args.days,
                           args.unlabelled)
    print(f"parity: rows={rows} mismatches={mismatches}")


if __name__ == "__main__":
    main()
