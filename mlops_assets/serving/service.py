"""The prediction service behind the HTTP layer: prepare, score per arm, answer, log; push events.

Everything comes from the project: request fields, calendar features, the views and their keys,
the prediction time, the problem type and the threshold. Each instance's model inputs are its
direct request features, its calendar features and the view features at its prediction time.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from mlflow import MlflowClient
from pydantic import BaseModel

from mlops_assets.contract import LOG_FEATURES, LOG_INPUTS, LOG_PREDICTION, PREDICTION_TIME
from mlops_assets.features.online_store import OnlineStore, PushResult
from mlops_assets.features.repository import model_features
from mlops_assets.features.request_features import calendar_columns, prediction_time
from mlops_assets.project.loading import load_project
from mlops_assets.scoring_model import ScoringModel
from mlops_assets.serving.alerts import ServingAlerts
from mlops_assets.serving.answers import component_prediction, explain_one, logged_prediction, outcome
from mlops_assets.serving.config import ConfigError, ServingConfig
from mlops_assets.serving.errors import ClientError
from mlops_assets.serving.experiment import SPLIT_MODES, choose_arm, resolve_split_key, split_key
from mlops_assets.serving.features import OnlineFeatures
from mlops_assets.serving.metrics import Metrics, StageClock
from mlops_assets.serving.models import Arms, LoadedModel, ModelSlot, RegistryWatcher
from mlops_assets.serving.predlog import LogFull, PredictionLog
from mlops_assets.serving.routine import LoadedRoutine, preprocess, score
from mlops_assets.serving.schemas import request_models


class NotReady(Exception):
    """No champion is loaded yet: the service answers 503 until the registry has one."""


@dataclass(slots=True)
class Pass:
    """The instances of one scoring pass as columns: each model input by name (view features, calendar
    features, direct request fields), and per instance its log inputs, prediction time (ISO 8601, once for
    the answer and the record), view freshness, missing views, arm, and which request (group) and position
    within it it answers. Columns, because the model matrix and the log records read them so."""

    inputs: list[dict[str, object]]
    columns: dict[str, list[object]]
    freshness: list[dict[str, float | None]]
    missing: list[list[str]]
    when: list[str]
    arms: list[str]
    groups: list[int]
    positions: list[int]
    absent: list[list[str]]  # per instance, its direct fields without a value

    def __len__(self) -> int:
        return len(self.when)

    def select(self, names: list[str], index: list[int] | None) -> list[list[object]]:
        """Model inputs for the instances at `index` (all: None), a column each; one no part of the project
        provides is missing everywhere."""
        get, n = self.columns.get, len(self) if index is None else len(index)
        columns = [get(name) for name in names]
        if index is not None:
            columns = [None if values is None else [values[i] for i in index] for values in columns]
        return [[None] * n if values is None else values for values in columns]

    def row(self, i: int) -> dict[str, object]:
        """Instance i's inputs by name (what a routine's steps and components read)."""
        return {name: values[i] for name, values in self.columns.items()}


@dataclass(frozen=True)
class Group:
    """One request's instances. Requests that arrive together are scored in one pass (one lookup per
    view, one matrix per arm, one log write) and each is still answered and logged as itself."""

    instances: list[BaseModel]
    request_id: str
    endpoint: str
    started: float
    single: bool = True


Answered = tuple[list[dict[str, object]], "Future[bool] | None"]


def _allowed(levels: list[str]) -> str:
    shown = ", ".join(repr(v) for v in levels[:20])
    return shown + (f" and {len(levels) - 20} more" if len(levels) > 20 else "")


class Service:
    """Owns the model slot, the registry watcher, the online features and the prediction log."""

    def __init__(self, config: ServingConfig) -> None:
        self.config = config
        self.project = load_project(config.project_path).spec
        self.models = request_models(self.project, config.max_batch)
        try:
            self.split_key = resolve_split_key(config.split_key, self.project)
        except ValueError as exc:
            raise ConfigError(f"MLOPS_SERVING_SPLIT_KEY: {exc}") from None
        self.direct = [f for f in self.project.features if f not in self.project.request.calendar]
        self.datetime_fields = [f for f, spec in self.project.request.fields.items() if spec.type == "datetime"]
        self._check_routine(config)
        self.metrics = Metrics()
        self.slot = ModelSlot(self.project.used_views)
        self.store = OnlineStore(config.online_store)
        self.features = OnlineFeatures(self.store, self.project, self.project.used_views)
        assert config.alerts_path is not None
        self.alerts = ServingAlerts(config.alerts_path, config.alert_webhook)
        self.log = PredictionLog(config.prediction_log_dir, config.log_queue_size, config.log_file_records,
                                 config.log_ack, config.log_flush_seconds, on_change=self._log_changed)
        client = MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.effective_registry_uri)
        rollout = self.project.promotion == "rollout"  # a rollout needs the challenger loaded
        arms = ("champion",) if config.experiment == "off" and not rollout else ("champion", "challenger")
        arms = () if self.project.routine is not None else arms  # the routine's components are its arms
        self.watcher = RegistryWatcher(client, self.project, self.slot, self.metrics, arms, config.poll_seconds,
                                       also=self.features.refresh, alert=self.alerts.send)

    def _check_routine(self, config: ServingConfig) -> None:
        """A routine answers every request as one unit, from inputs the project provides."""
        routine = self.project.routine
        if routine is None:
            return
        if config.experiment != "off":
            raise ConfigError(f"MLOPS_SERVING_EXPERIMENT: {config.experiment!r} needs a champion and a "
                              f"challenger; routine {routine.name!r} serves its components as one unit (use off)")
        inputs = model_features(self.project)
        for i, step in enumerate(routine.pre):
            if step.field not in inputs:
                raise ConfigError(f"{config.project_path}: routine.pre.{i}.field: {step.field!r} is not a model "
                                  f"input of the project; pre steps apply to {inputs[:10]}")

    def start(self) -> None:
        """Threads start here; a short GIL switch interval keeps the log writer and registry poller
        from holding a request for Python's default 5 ms (measured: p99 7.5 ms -> 1.4 ms)."""
        sys.setswitchinterval(self.config.switch_interval_ms / 1000)
        self.log.start()
        self.features.load()
        self.watcher.safe_refresh()
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()
        self.log.close()

    @property
    def ready(self) -> bool:
        return self.slot.arms.champion is not None

    def _log_changed(self, failing: bool, reason: str) -> None:
        """The prediction log writer lost (or regained) its disk: alert either way."""
        where = str(self.config.prediction_log_dir)
        if failing:
            policy = ("answering with X-Prediction-Log: not-logged" if self.config.log_unavailable == "answer"
                      else "refusing predictions with 503")
            self.alerts.send("ERROR", f"prediction log cannot be written ({reason}); {policy}, records held "
                                      f"in memory (up to {self.config.log_queue_size})",
                             {"log_dir": where, "reason": reason})
        else:
            self.alerts.send("WARN", f"prediction log writes again (was: {reason}); held records written",
                             {"log_dir": where})

    def push(self, source: str, events: list[object]) -> PushResult:
        """Store pushed events of a source (every worker applies them before its next request)."""
        return self.store.push(self.project, source, events)

    def _refuse_unknown(self, requests: list[dict[str, object]], arms: Arms, single: bool) -> None:
        """With `unknown_categories: refuse`, a category the champion (or a routine component) never saw is a
        422 naming it."""
        if self.project.request.unknown_categories != "refuse":
            return
        problems = []
        routine, champion = arms.routine, arms.champion
        assert champion is not None
        models = [m.model for m in routine.components.values()] if routine is not None else [champion.model]
        for i, request in enumerate(requests):
            direct = {f: request.get(f) for f in self.direct}
            for name in dict.fromkeys(n for m in models for n in m.unseen(direct)):
                where = name if single else f"instances[{i}].{name}"
                levels = next(m.categorical_levels[name] for m in models if name in m.categorical_levels)
                problems.append({"field": where, "problem": f"unknown value; the model knows {_allowed(levels)}"})
        if problems:
            raise ClientError(422, problems[:20])

    def _times(self, requests: list[dict[str, object]], single: bool) -> list[datetime]:
        """Each instance's prediction time; one that cannot be derived is a 422 naming its field."""
        times = [prediction_time(self.project, r) for r in requests]
        if any(t is None for t in times):
            field = self.project.request.time
            where = [field if single else f"instances[{i}].{field}" for i, t in enumerate(times) if t is None]
            raise ClientError(422, [{"field": w, "problem": "field required: the prediction time is derived from it"}
                                    for w in where[:20]])
        return times  # type: ignore[return-value]

    def _prepare(self, instances: list[BaseModel], requests: list[dict[str, object]], times: list[datetime],
                 ids: list[str], places: list[tuple[int, int]], arms: Arms) -> Pass:
        """The pass as columns: every view at each instance's time, the calendar parts, the direct fields;
        and per instance its arm and its inputs as the log keeps them."""
        found = self.features.lookup_columns(arms.views, requests, times)
        cfg, n = self.config, len(requests)
        mode, share = (("canary", arms.rollout_share) if arms.rollout_share is not None
                       else (cfg.experiment, cfg.challenger_share))
        if mode in SPLIT_MODES and arms.challenger is not None:
            chosen = [choose_arm(mode, share, split_key(request, rid, self.split_key), cfg.split_salt, True)
                      for request, rid in zip(requests, ids, strict=True)]
        else:
            chosen = ["champion"] * n
        columns = found.columns  # direct fields win over calendar features, which win over view features
        columns.update(calendar_columns(self.project, requests))
        absent: list[list[str]] = [[] for _ in range(n)]
        for name in self.direct:
            columns[name] = column = [request.get(name) for request in requests]
            for i, value in enumerate(column):
                if value is None:
                    absent[i].append(name)
        moments = self.datetime_fields
        inputs = [request if all(_whole_minutes(request.get(f)) for f in moments)
                  else instance.model_dump(mode="json", exclude={"explain"})
                  for instance, request in zip(instances, requests, strict=True)]
        return Pass(inputs, columns, found.freshness, found.missing, [t.isoformat() for t in times], chosen,
                    [g for g, _ in places], [p for _, p in places], absent)

    def predict(self, instances: list[BaseModel], explain: bool, request_id: str, endpoint: str,
                started: float, single: bool = True, clock: StageClock | None = None) -> Answered:
        """Score one request's instances: the answers, and the future that says when their log records are
        durable (None: not accepted by the log). `clock` times the stages."""
        result = self.predict_groups([Group(instances, request_id, endpoint, started, single)], explain, clock)[0]
        if isinstance(result, ClientError):
            raise result
        return result

    def predict_groups(self, groups: list[Group], explain: bool = False,
                       clock: StageClock | None = None) -> list[Answered | ClientError]:
        """Score several requests in one pass, each instance with its arm (one matrix per arm). Per request:
        its answers and log future, or the ClientError that refuses it alone (an unknown category, no
        prediction time): the others are scored all the same."""
        clock = clock or self.metrics.clock()
        arms = self.slot.arms
        if arms.champion is None:
            raise NotReady
        results: list[Answered | ClientError] = []
        instances: list[BaseModel] = []
        requests: list[dict[str, object]] = []
        times: list[datetime] = []
        ids: list[str] = []
        places: list[tuple[int, int]] = []
        for index, group in enumerate(groups):
            dumped = [_values(i) for i in group.instances]
            try:
                self._refuse_unknown(dumped, arms, group.single)
                when = self._times(dumped, group.single)
            except ClientError as exc:
                results.append(exc)
                continue
            results.append(([], None))
            n, rid = len(dumped), group.request_id
            instances += group.instances
            requests += dumped
            times += when
            ids += [rid] if n == 1 else [f"{rid}:{i}" for i in range(n)]
            places += [(index, i) for i in range(n)]
        if not requests:
            return results
        batch = self._prepare(instances, requests, times, ids, places, arms)
        clock.lap("lookup")
        answers: list[dict[str, object]] = [{} for _ in range(len(batch))]
        records: list[dict[str, object]] = []
        if arms.routine is not None:
            self._score_routine(arms.routine, batch, explain, answers, records, clock)
        else:
            for arm in sorted(set(batch.arms)):
                chosen = [i for i, a in enumerate(batch.arms) if a == arm]
                self._score(arms.get(arm), arm, batch, None if len(chosen) == len(batch) else chosen, explain,
                            answers, records, clock)
            shadow = arms.challenger if self.config.experiment == "shadow" else None
            if shadow is not None:
                self._score(shadow, "shadow", batch, None, False, None, records, clock)
        future = self._log(records, groups)
        clock.lap("log")
        for group, answer in zip(batch.groups, answers, strict=True):
            result = results[group]
            assert not isinstance(result, ClientError)
            result[0].append(answer)
        return [r if isinstance(r, ClientError) else (r[0], future) for r in results]

    def _score(self, loaded: LoadedModel | None, arm: str, batch: Pass, index: list[int] | None, explain: bool,
               answers: list[dict[str, object]] | None, records: list[dict[str, object]],
               clock: StageClock) -> None:
        """Predict the instances at `index` (all: None) with one model; fill their answers (unless shadow)
        and log records."""
        assert loaded is not None
        model = loaded.model
        names = list(model.features)
        columns = batch.select(names, index)
        at = range(len(batch)) if index is None else index
        matrix = model.matrix_columns(columns, len(at))
        outputs = model.predict_matrix(matrix)
        contributions = model.contributions_matrix(matrix) if explain else None
        clock.lap("predict")
        unseen = model.unseen_columns(dict(zip(names, columns, strict=True)), len(at))
        threshold, named = self.project.threshold, {"name": loaded.name, "version": loaded.version}
        rows = zip(*columns, strict=True) if columns else ((),) * len(at)
        for j, (i, output, values, strange) in enumerate(zip(at, outputs.tolist(), rows, unseen, strict=True)):
            fields = outcome(model, output, threshold)
            missing = [*batch.missing[i], *batch.absent[i], *strange]
            features = dict(zip(names, values, strict=True))
            records.append(self._record(loaded.name, loaded.version, arm, batch, i, features, fields, missing))
            if answers is None:
                continue
            answers[i] = {**fields, "model": named, "arm": arm, "prediction_time": batch.when[i],
                          "feature_freshness": batch.freshness[i], "missing_features": missing}
            if contributions is not None:
                answers[i]["explanation"] = explain_one(model, contributions[j], features,
                                                        self.config.explain_top_k, fields)
        self.metrics.predicted(arm, len(at))
        clock.lap("answer")

    def _score_routine(self, routine: LoadedRoutine, batch: Pass, explain: bool,
                       answers: list[dict[str, object]], records: list[dict[str, object]], clock: StageClock) -> None:
        """Score a pass through the routine: the combined answer, what each component said (and, explained,
        each component's own top contributions and the combination's breakdown), one log record each."""
        spec, parts = routine.spec, routine.components
        rows = [preprocess(spec.pre, batch.row(i)) for i in range(len(batch))]
        scores = score(spec, {c: m.model for c, m in parts.items()}, rows)
        lead = next(iter(parts.values()))
        contributions = {c: _contributions(m.model, rows, scores.scored[c]) if explain else {} for c, m in parts.items()}
        clock.lap("predict")
        read = list(dict.fromkeys(f for m in parts.values() for f in m.model.features))
        for j, row in enumerate(rows):
            fields = outcome(lead.model, scores.combined[j], self.project.threshold)
            components = {c: {"model": m.name, "version": m.version,
                              "prediction": component_prediction(m.model, scores.outputs[c][j])} for c, m in parts.items()}
            missing = [*batch.missing[j], *(f for f in self.direct if row.get(f) is None),
                       *dict.fromkeys(u for m in parts.values() for u in m.model.unseen(row))]
            features = dict(zip(read, map(row.get, read), strict=True))
            record = self._record(spec.name, routine.label, "routine", batch, j, features, fields, missing)
            records.append({**record, "routine": spec.name, "components": components})
            answers[j] = {**fields, "model": {"name": spec.name, "version": routine.label}, "arm": "routine",
                          "routine": spec.name, "components": components,
                          "prediction_time": batch.when[j],
                          "feature_freshness": batch.freshness[j], "missing_features": missing}
            if explain:
                answers[j]["explanation"] = {"routine": scores.breakdown[j], "components": {
                    c: explain_one(m.model, contributions[c][j], row, self.config.explain_top_k,
                                   outcome(m.model, scores.outputs[c][j], self.project.threshold))  # type: ignore[arg-type]
                    for c, m in parts.items() if j in contributions[c]}}
        self.metrics.predicted("routine", len(rows), routine.label)
        clock.lap("answer")

    def _record(self, name: str, version: str, arm: str, batch: Pass, i: int, features: dict[str, object],
                fields: dict[str, object], missing: list[str]) -> dict[str, object]:
        """Instance i's log record; NaN and numpy values are the log encoder's to write (as null, numbers).
        `_group` says whose request it is until `_log` stamps the request's id and latency on it."""
        return {"_group": batch.groups[i], "instance": batch.positions[i], "status": 200, "arm": arm,
                "model_name": name, "model_version": version, LOG_INPUTS: batch.inputs[i],
                LOG_FEATURES: features, PREDICTION_TIME: batch.when[i], **fields,
                LOG_PREDICTION: logged_prediction(fields), "feature_freshness": batch.freshness[i],
                "missing_features": missing}

    def _log(self, records: list[dict[str, object]], groups: list[Group]) -> Future[bool] | None:
        """Stamp each record with its request's id, endpoint and latency so far; one write for them all."""
        now, done = datetime.now(UTC).isoformat(), time.perf_counter()
        stamps = [{"request_id": g.request_id, "timestamp": now, "endpoint": g.endpoint,
                   "latency_ms": (done - g.started) * 1000} for g in groups]
        for record in records:
            record.update(stamps[record.pop("_group", 0)])  # type: ignore[call-overload]
        try:
            return self.log.submit(records)
        except LogFull:
            return None

    def log_refusal(self, request_id: str, endpoint: str, status: int, detail: object,
                    started: float) -> Future[bool] | None:
        """A refused or failed request is a log record too (status and reason, no inputs)."""
        return self._log([{"status": status, "arm": None,
                           "error": detail if isinstance(detail, str) else json.dumps(detail)}],
                         [Group([], request_id, endpoint, started)])


def _values(instance: BaseModel) -> dict[str, object]:
    """An instance's validated values by field, without `explain`: `model_dump()` of these flat models
    (primitive fields, no serializers), read from the instance's own dict in a fraction of the time."""
    return {name: value for name, value in instance.__dict__.items() if name != "explain"}


def _whole_minutes(value: object) -> bool:
    """A datetime the log encoder writes as pydantic's JSON mode does (orjson, UTC as Z): one whose UTC offset
    is whole minutes (not an old local mean time such as -05:17:32, which the two round differently)."""
    if not isinstance(value, datetime):
        return True
    offset = value.utcoffset()
    return offset is None or (offset.seconds % 60 == 0 and offset.microseconds == 0)


def _contributions(model: ScoringModel, rows: list[dict[str, object]], which: list[int]) -> dict[int, np.ndarray]:
    """TreeSHAP of the rows a routine component scored, by row position."""
    if not which:
        return {}
    return dict(zip(which, model.contributions_matrix(model.matrix([rows[i] for i in which])), strict=True))

