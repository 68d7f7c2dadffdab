"""The prediction service behind the HTTP layer: prepare, score per arm, answer, log; push events.

Everything comes from the project: request fields, calendar features, the views and their keys,
the prediction time, the problem type and the threshold. Each instance's model inputs are its
direct request features, its calendar features and the view features at its prediction time.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from mlflow import MlflowClient
from pydantic import BaseModel

from mlops_assets.contract import LOG_FEATURES, LOG_INPUTS, LOG_PREDICTION, PREDICTION_TIME
from mlops_assets.features.online_store import OnlineStore, PushResult
from mlops_assets.features.repository import model_features
from mlops_assets.features.request_features import calendar_values, prediction_time
from mlops_assets.project.loading import load_project
from mlops_assets.scoring_model import ScoringModel
from mlops_assets.serving.alerts import ServingAlerts
from mlops_assets.serving.answers import component_prediction, explain_one, logged_prediction, outcome
from mlops_assets.serving.config import ConfigError, ServingConfig
from mlops_assets.serving.errors import ClientError
from mlops_assets.serving.experiment import SPLIT_MODES, choose_arm, resolve_split_key, split_key
from mlops_assets.serving.features import Lookup, OnlineFeatures
from mlops_assets.serving.metrics import Metrics, StageClock
from mlops_assets.serving.models import Arms, LoadedModel, ModelSlot, RegistryWatcher
from mlops_assets.serving.predlog import LogFull, PredictionLog
from mlops_assets.serving.routine import LoadedRoutine, preprocess, score
from mlops_assets.serving.schemas import request_models


class NotReady(Exception):
    """No champion is loaded yet: the service answers 503 until the registry has one."""


@dataclass(slots=True)
class Prepared:
    """One instance ready to score: its inputs, model row, lookup, prediction time, arm, and which request
    (group) and position within it it answers."""

    inputs: dict[str, object]
    row: dict[str, object]
    lookup: Lookup
    prediction_time: datetime
    arm: str
    group: int = 0
    position: int = 0
    when: str = ""  # prediction_time in ISO 8601, once for the answer and the record


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
                 ids: list[str], places: list[tuple[int, int]], arms: Arms) -> list[Prepared]:
        lookups = self.features.lookup_many(arms.views, requests, times)
        cfg, out = self.config, []
        mode, share = (("canary", arms.rollout_share) if arms.rollout_share is not None
                       else (cfg.experiment, cfg.challenger_share))
        split, direct = mode in SPLIT_MODES and arms.challenger is not None, self.direct
        for instance, request, when, found, rid, (group, position) in zip(instances, requests, times, lookups, ids,
                                                                          places, strict=True):
            row = found.features  # this instance's own dict: the model row is built on it
            row.update(calendar_values(self.project, request))
            row.update(zip(direct, map(request.get, direct), strict=True))
            arm = "champion" if not split else choose_arm(mode, share, split_key(request, rid, self.split_key),
                                                           cfg.split_salt, True)
            inputs = instance.model_dump(mode="json", exclude={"explain"})
            out.append(Prepared(inputs, row, found, when, arm, group, position, when.isoformat()))
        return out

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
            dumped = [i.model_dump(exclude={"explain"}) for i in group.instances]
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
        items = self._prepare(instances, requests, times, ids, places, arms)
        clock.lap("lookup")
        answers: list[dict[str, object]] = [{} for _ in items]
        records: list[dict[str, object]] = []
        if arms.routine is not None:
            self._score_routine(arms.routine, items, explain, answers, records, clock)
        else:
            for arm in sorted({p.arm for p in items}):
                chosen = [i for i, p in enumerate(items) if p.arm == arm]
                self._score(arms.get(arm), arm, [items[i] for i in chosen], explain, chosen, answers, records, clock)
            shadow = arms.challenger if self.config.experiment == "shadow" else None
            if shadow is not None:
                self._score(shadow, "shadow", items, False, list(range(len(items))), None, records, clock)
        future = self._log(records, groups)
        clock.lap("log")
        for item, answer in zip(items, answers, strict=True):
            result = results[item.group]
            assert not isinstance(result, ClientError)
            result[0].append(answer)
        return [r if isinstance(r, ClientError) else (r[0], future) for r in results]

    def _score(self, loaded: LoadedModel | None, arm: str, items: list[Prepared], explain: bool,
               positions: list[int], answers: list[dict[str, object]] | None,
               records: list[dict[str, object]], clock: StageClock) -> None:
        """Predict a group with one model; fill the answers (unless shadow) and the log records."""
        assert loaded is not None
        model = loaded.model
        matrix = model.matrix([p.row for p in items])
        outputs = model.predict_matrix(matrix)
        contributions = model.contributions_matrix(matrix) if explain else None
        clock.lap("predict")
        threshold, direct, unseen, names = self.project.threshold, self.direct, model.unseen, list(model.features)
        named = {"name": loaded.name, "version": loaded.version}
        for j, (position, item, output) in enumerate(zip(positions, items, outputs.tolist(), strict=True)):
            row = item.row
            fields = outcome(model, output, threshold)
            missing = [*item.lookup.missing, *(f for f in direct if row.get(f) is None), *unseen(row)]
            records.append(self._record(loaded, arm, item, fields, missing, names))
            if answers is None:
                continue
            answers[position] = {**fields, "model": named, "arm": arm, "prediction_time": item.when,
                                 "feature_freshness": item.lookup.freshness, "missing_features": missing}
            if contributions is not None:
                answers[position]["explanation"] = explain_one(model, contributions[j], row,
                                                               self.config.explain_top_k, fields)
        self.metrics.predicted(arm, len(items))
        clock.lap("answer")

    def _score_routine(self, routine: LoadedRoutine, items: list[Prepared], explain: bool,
                       answers: list[dict[str, object]], records: list[dict[str, object]], clock: StageClock) -> None:
        """Score a group through the routine: the combined answer, what each component said (and, explained,
        each component's own top contributions and the combination's breakdown), one log record each."""
        spec, parts = routine.spec, routine.components
        rows = [preprocess(spec.pre, p.row) for p in items]
        scores = score(spec, {c: m.model for c, m in parts.items()}, rows)
        lead = next(iter(parts.values()))
        contributions = {c: _contributions(m.model, rows, scores.scored[c]) if explain else {} for c, m in parts.items()}
        clock.lap("predict")
        for j, item in enumerate(items):
            fields = outcome(lead.model, scores.combined[j], self.project.threshold)
            components = {c: {"model": m.name, "version": m.version,
                              "prediction": component_prediction(m.model, scores.outputs[c][j])} for c, m in parts.items()}
            missing = [*item.lookup.missing, *(f for f in self.direct if rows[j].get(f) is None),
                       *dict.fromkeys(u for m in parts.values() for u in m.model.unseen(rows[j]))]
            read = dict.fromkeys(f for m in parts.values() for f in m.model.features)
            scored_item = Prepared(item.inputs, rows[j], item.lookup, item.prediction_time, "routine", item.group,
                                   item.position, item.when)
            record = self._record(lead, "routine", scored_item, fields, missing, read)
            records.append({**record, "model_name": spec.name, "model_version": routine.label, "routine": spec.name,
                            "components": components})
            answers[j] = {**fields, "model": {"name": spec.name, "version": routine.label}, "arm": "routine",
                          "routine": spec.name, "components": components,
                          "prediction_time": item.when,
                          "feature_freshness": item.lookup.freshness, "missing_features": missing}
            if explain:
                answers[j]["explanation"] = {"routine": scores.breakdown[j], "components": {
                    c: explain_one(m.model, contributions[c][j], rows[j], self.config.explain_top_k,
                                   outcome(m.model, scores.outputs[c][j], self.project.threshold))  # type: ignore[arg-type]
                    for c, m in parts.items() if j in contributions[c]}}
        self.metrics.predicted("routine", len(items), routine.label)
        clock.lap("answer")

    def _record(self, loaded: LoadedModel, arm: str, item: Prepared, fields: dict[str, object],
                missing: list[str], features: Iterable[str] | None = None) -> dict[str, object]:
        """One instance's log record; NaN and numpy values are the log encoder's to write (as null, numbers).
        `_group` says whose request it is until `_log` stamps the request's id and latency on it."""
        names = features if isinstance(features, list) else list(features or loaded.model.features)
        return {"_group": item.group, "instance": item.position, "status": 200, "arm": arm, "model_name": loaded.name,
                "model_version": loaded.version, LOG_INPUTS: item.inputs,
                LOG_FEATURES: dict(zip(names, map(item.row.get, names), strict=True)),
                PREDICTION_TIME: item.when, **fields,
                LOG_PREDICTION: logged_prediction(fields), "feature_freshness": item.lookup.freshness,
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


def _contributions(model: ScoringModel, rows: list[dict[str, object]], which: list[int]) -> dict[int, np.ndarray]:
    """TreeSHAP of the rows a routine component scored, by row position."""
    if not which:
        return {}
    return dict(zip(which, model.contributions_matrix(model.matrix([rows[i] for i in which])), strict=True))

