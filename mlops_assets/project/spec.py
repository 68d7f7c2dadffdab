"""The project file's schema: everything a lifecycle needs, declared as data.

In the spirit of Feast's repository objects and Chronon's GroupBy: sources (typed schema with
ranges and domains), entities (join keys), feature views (plain columns as of the prediction
time, or windowed aggregations ending exactly at it), label, problem, prediction time, request,
splits, metrics, slices, gate, tuning and monitoring. No Dagster here; the core builds its
definitions, validation suites, request model and model card from these objects.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"


def parse_duration(value: object) -> timedelta:
    """'90s', '15m', '3h', '28d', '1w' (or a timedelta) -> timedelta."""
    if isinstance(value, timedelta):
        return value
    match = DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration; write e.g. '15m', '3h', '28d' or '1w'")
    return timedelta(seconds=float(match[1]) * UNIT_SECONDS[match[2]])


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Name = Annotated[str, Field(pattern=IDENTIFIER)]


def duration_label(value: timedelta) -> str:
    """The compact label used in feature names: 3h, 28d, 90m."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0h"
    for unit in ("d", "h", "m"):
        if seconds % UNIT_SECONDS[unit] == 0 and seconds >= UNIT_SECONDS[unit]:
            return f"{seconds // UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ColumnType = Literal["int", "float", "str", "bool", "datetime", "date"]
Severity = Literal["hard", "soft"]
Granularity = Literal["day", "week", "month"]


class ColumnSpec(Strict):
    """A typed column: nullability, plausible range, closed domain, pattern."""

    type: ColumnType
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    range_severity: Severity = "hard"
    range_mostly: float = Field(1.0, gt=0, le=1)
    domain: list[str] | None = None
    max_null_share: float | None = Field(None, ge=0, le=1)
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> ColumnSpec:
        if (self.min is not None or self.max is not None) and self.type not in {"int", "float"}:
            raise ValueError(f"min/max apply to int and float columns, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class ExpectationSpec(Strict):
    """An extra rule: a polars SQL boolean expression that every row (or `mostly` of them) satisfies."""

    name: Name
    rule: str
    severity: Severity = "hard"
    mostly: float = Field(1.0, gt=0, le=1)


class DeriveSpec(Strict):
    """A project function (in the project's code module) that adds derived columns after validation.

    Row by row: a row's derived values may depend on that row and the reference inputs only, since the
    feature views prepare a source one validated batch at a time (the row count is checked; the rest is
    the function's contract)."""

    function: Name
    inputs: list[Name] = Field(default_factory=list, description="reference sources the function also receives")
    adds: dict[Name, ColumnType] = Field(default_factory=dict, description="the columns it adds, typed")


class ComputedColumn(Strict):
    """A column computed after validation by a polars SQL expression over the source's columns."""

    expr: str
    type: ColumnType


CalendarPart = Literal["year", "month", "day", "hour", "minute"]


class ShiftSpec(Strict):
    """Hold a batch whose distribution moved further than earlier periods moved between themselves.

    Per column, the population stability index (PSI) of the batch against the earlier periods is
    compared with `margin` times the largest PSI any earlier period showed against the others,
    and never below `floor` (0.25 is the usual "significant shift" mark for PSI).
    """

    columns: list[Name] | None = Field(None, description="columns to watch; default: every numeric or text "
                                                        "column that is no key, time or calendar column")
    margin: float = Field(3.0, ge=1)
    floor: float = Field(0.25, gt=0)
    history: int = Field(12, ge=2, description="how many earlier periods form the reference")
    min_periods: int = Field(3, ge=2, description="fewer earlier periods than this: no shift check yet")
    bins: int = Field(10, ge=2, le=100)
    min_rows: int = Field(1000, ge=1, description="smaller batches are not shift-checked: their PSI is noise")


class CompletenessSpec(Strict):
    """Hold a batch with far fewer rows than usual, or one that covers too few days of its period."""

    min_row_ratio: float = Field(0.5, gt=0, le=1, description="of the median rows of earlier periods")
    min_day_coverage: float = Field(0.8, gt=0, le=1, description="share of the period's days with rows")


class SemanticChecks(Strict):
    """Checks between a valid batch and earlier ones, before training: what is wrong but valid."""

    calendar: dict[CalendarPart, Name] = Field(default_factory=dict, description="calendar columns the time "
                                               "column must agree with, read on the source's clock")
    max_calendar_mismatch: float = Field(0.0, ge=0, le=1, description="share of rows allowed to disagree")
    shift: ShiftSpec = ShiftSpec()
    completeness: CompletenessSpec | None = CompletenessSpec()


class SourceSpec(Strict):
    """A table the upstream system delivers: periodic by its time column, or a reference table."""

    path: str | None = None
    format: Literal["csv", "parquet"] | None = None
    kind: Literal["periodic", "reference"] = "periodic"
    time: Name | None = None
    time_zone: str = "UTC"
    schema_: dict[Name, ColumnSpec] = Field(alias="schema")
    keys: list[Name] = Field(default_factory=list)
    unique: list[list[Name]] = Field(default_factory=list)
    expectations: list[ExpectationSpec] = Field(default_factory=list)
    computed: dict[Name, ComputedColumn] = Field(default_factory=dict)
    derive: DeriveSpec | None = None
    semantics: SemanticChecks = SemanticChecks()
    description: str = ""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _columns_known(self) -> SourceSpec:
        if self.kind == "periodic" and self.time is None:
            raise ValueError("a periodic source needs `time`: the column that says which period a row is in")
        named = [*self.keys, *(c for u in self.unique for c in u), *([self.time] if self.time else []),
                 *self.semantics.calendar.values(), *(self.semantics.shift.columns or [])]
        unknown = sorted({c for c in named if c not in self.schema_})
        if unknown:
            raise ValueError(f"columns not in the schema: {unknown}; declare them under `schema`")
        if self.time and self.schema_[self.time].type not in {"datetime", "date"}:
            raise ValueError(f"time column {self.time!r} must be a datetime or date column")
        return self


Function = Literal["count", "sum", "mean", "min", "max", "share", "last"]


class AggregationSpec(Strict):
    """Chronon-style: (function, column, windows, optional filter); one feature per window."""

    function: Function
    column: Name | None = None
    windows: list[Duration] = Field(min_length=1)
    where: str | None = None
    name: str | None = Field(None, description="feature name template, {window} is replaced; "
                                                "default <view prefix>_<column>_<function>_<window>")

    @model_validator(mode="after")
    def _needs(self) -> AggregationSpec:
        if self.function != "count" and self.column is None:
            raise ValueError(f"{self.function} needs a `column`")
        if self.function == "share" and not self.where:
            raise ValueError("share needs `where`: the condition whose share is taken, e.g. 'delay_minutes > 15'")
        return self


class FeatureViewSpec(Strict):
    """Features of one entity from one source, as known at the prediction time.

    `features` are plain columns: the latest value known at or before the prediction time and
    not older than `ttl`. `aggregations` are computed over the events known in (t - window, t].
    """

    source: Name
    entity: Name
    known_at: Name | None = None
    ttl: Duration | None = None
    features: list[Name] = Field(default_factory=list)
    aggregations: list[AggregationSpec] = Field(default_factory=list)
    prefix: str | None = None
    event_id: list[Name] = Field(default_factory=list)
    description: str = ""

    @model_validator(mode="after")
    def _something(self) -> FeatureViewSpec:
        if not self.features and not self.aggregations:
            raise ValueError("a feature view needs `features` or `aggregations`")
        return self


class ThresholdLabel(Strict):
    column: Name
    above: float


class FutureLabel(Strict):
    """The value of `column` for the same entity `offset` after the row's time (e.g. tomorrow's)."""

    column: Name
    offset: Duration


class LabelSpec(Strict):
    """A column of the example source, or derived from one (a threshold, a future value)."""

    column: Name | None = None
    threshold: ThresholdLabel | None = None
    future: FutureLabel | None = None
    name: Name = "label"
    drop_missing: bool = True
    missing_as: float | None = Field(None, description="value for a missing label when drop_missing is false")

    @model_validator(mode="after")
    def _one(self) -> LabelSpec:
        given = [x for x in (self.column, self.threshold, self.future) if x is not None]
        if len(given) != 1:
            raise ValueError("declare exactly one of `column`, `threshold` or `future`")
        return self


class PredictionTimeSpec(Strict):
    """When a prediction is made: a time column of the examples minus a lead."""

    column: Name
    lead: Duration = timedelta(0)


class RequestFieldSpec(Strict):
    """A field the client sends: typed, with an optional domain, range or pattern."""

    type: Literal["int", "float", "str", "datetime", "date", "bool"]
    required: bool = True
    min: float | None = None
    max: float | None = None
    gt: float | None = None
    domain: list[str] | None = None
    pattern: str | None = None
    max_length: int = 64
    time_zone: str | None = Field(None, description="zone of a naive datetime sent by the client")
    description: str = ""
    example: object = None


class CalendarFeature(Strict):
    """A feature computed from a request datetime in its zone: hour, weekday, month, day of year."""

    part: Literal["hour", "weekday", "month", "day", "day_of_year", "minute"]
    of: Name


class RequestSpec(Strict):
    """What a client sends (keys and request-time fields), and features computed from it alone."""

    fields: dict[Name, RequestFieldSpec]
    time: Name = Field(description="the request field the prediction time is derived from")
    calendar: dict[Name, CalendarFeature] = Field(default_factory=dict)
    unknown_categories: Literal["refuse", "missing"] = "missing"
    example: dict[str, object] = Field(default_factory=dict)


class SplitSpec(Strict):
    """By time at a granularity: the newest periods test, the ones before validate, a gap between."""

    granularity: Granularity = "month"
    test: int = Field(2, ge=1)
    validation: int = Field(1, ge=1)
    gap: int = Field(0, ge=0)
    min_rows: int = Field(200, ge=1, description="fewest validation and test rows allowed")


class BinSlice(Strict):
    name: Name
    column: Name
    bins: list[float] = Field(min_length=1)


class TuningSpec(Strict):
    n_trials: int = Field(6, ge=1)
    timeout_seconds: float = Field(90, gt=0, description="the tuning budget: a later trial stops boosting when it "
                                                     "is spent (the first trial always finishes)")
    max_rounds: int = Field(1000, ge=10)
    early_stopping_rounds: int = Field(50, ge=5)
    max_bin: int = Field(255, ge=2, le=255, description="histogram bins per numeric feature; fewer bins make "
                                                        "every boosting round cheaper (and regularise)")
    start_params: dict[Literal["learning_rate", "num_leaves", "min_child_samples", "feature_fraction",
                               "bagging_fraction", "lambda_l2"], float | int] | None = Field(
        None, description="the first trial's LightGBM parameters (others from the defaults), e.g. promoted "
                          "from an experimentation notebook")


class GateSpec(Strict):
    """Blessing: floors, the trivial baseline, the champion and every slice."""

    floors: dict[str, float] = Field(default_factory=dict)
    tolerance: float = Field(0.01, ge=0)
    slice_tolerance: float = Field(0.03, ge=0)
    min_slice_rows: int = Field(500, ge=1)
    baseline_margin: float = Field(0.0, ge=0, description="how far the candidate must beat the trivial baseline")
    max_slice_gap: float | None = Field(None, ge=0, description="worst slice may trail overall by at most this")


class InfraSpec(Strict):
    canary_rows: int = Field(200, ge=1)
    latency_budget_ms: float = Field(200.0, gt=0)
    timeout_seconds: float = Field(300.0, gt=0)


class ServingBudgetSpec(Strict):
    """What `serving_efficiency` alerts on: any route's p99 latency, and the share of 5xx answers, per period."""

    p99_ms: float = Field(50.0, gt=0)
    error_rate: float = Field(0.01, ge=0, le=1)


class MonitoringSpec(Strict):
    drift_warn_share: float = Field(0.3, ge=0, le=1)
    drift_error_share: float = Field(0.5, ge=0, le=1)
    skew_warn_rate: float = Field(0.05, ge=0, le=1)
    skew_error_rate: float = Field(0.5, ge=0, le=1)
    metric_drop_warn: float = Field(0.03, ge=0)
    metric_drop_error: float = Field(0.06, ge=0)
    retrain_on: Literal["WARN", "ERROR"] = "ERROR"
    retrain_cooldown_hours: float = Field(6.0, ge=0)
    sample_rows: int = Field(30_000, ge=100)
    serving_budget: ServingBudgetSpec = Field(default_factory=ServingBudgetSpec)


class PolicySpec(Strict):
    """When a continuous-training policy retrains: never, every N periods, on drift, on a live-metric drop."""

    name: Name
    retrain: Literal["never", "every", "drift", "metric_drop"]
    every: int = Field(1, ge=1, description="for `every`: retrain every N periods")
    drift_share: float = Field(0.3, gt=0, le=1, description="for `drift`: share of features with PSI > 0.25")
    metric_drop: float = Field(0.02, gt=0, description="for `metric_drop`: live metric worse than at training by")


def _default_policies() -> list[PolicySpec]:
    return [PolicySpec(name="never", retrain="never"), PolicySpec(name="every_period", retrain="every"),
            PolicySpec(name="every_3", retrain="every", every=3), PolicySpec(name="on_drift", retrain="drift"),
            PolicySpec(name="on_metric_drop", retrain="metric_drop")]


class BacktestSpec(Strict):
    """Replaying periods under several retraining policies before trusting one (see backtest/)."""

    initial: int = Field(3, ge=2, description="periods of history before the first served period")
    periods: int | None = Field(None, ge=1, description="how many periods to serve (default: all after initial)")
    max_rounds: int = Field(200, ge=10, description="fixed boosting budget per retrain (no tuning)")
    policies: list[PolicySpec] = Field(default_factory=_default_policies, min_length=1)


class RolloutSpec(Strict):
    """Progressive delivery of a blessed challenger: widen by steps while live labels show no regression."""

    steps: list[float] = Field(default_factory=lambda: [0.05, 0.25, 0.5, 1.0], min_length=1)
    confidence: float = Field(0.95, gt=0.5, lt=1, description="of the A/B test that must not show a regression")
    min_rows: int = Field(300, ge=1, description="labelled challenger rows needed before a step is judged")
    max_error_rate: float = Field(0.02, ge=0, le=1, description="challenger request errors that roll back")

    @model_validator(mode="after")
    def _steps_rise_to_everything(self) -> RolloutSpec:
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)) or not self.steps[0] > 0 or \
                self.steps[-1] != 1.0:
            raise ValueError("rollout.steps must rise strictly from above 0 to 1.0, e.g. [0.05, 0.25, 0.5, 1.0]")
        return self


class ExamplesSpec(Strict):
    """Which source's rows are the examples (one prediction each), and how they are keyed."""

    source: Name
    id: list[Name] = Field(min_length=1, description="columns that identify an example (joins labels to predictions)")
    filter: str | None = Field(None, description="polars SQL condition keeping only predictable rows")


class RoutineComponent(Strict):
    """One registered model a routine calls: by alias (default champion) or by a pinned version."""

    name: Name
    model: Name | None = Field(None, description="registered model name; default the project's model_name")
    alias: Name | None = Field(None, description="default champion")
    version: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _alias_or_version(self) -> RoutineComponent:
        if self.alias is not None and self.version is not None:
            raise ValueError(f"component {self.name!r}: give `alias` or `version`, not both")
        return self


class RoutineGate(Strict):
    """A gate: `then` answers when the gate component predicts above `above`, else `else` (value or component)."""

    component: Name
    above: float
    then: Name
    else_: float | Name = Field(alias="else")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RoutineStep(Strict):
    """A pre-processing step on one model input: clip it to [lo, hi], or fill it when missing."""

    field: Name
    clip: tuple[float, float] | None = None
    fill: float | str | None = None

    @model_validator(mode="after")
    def _one(self) -> RoutineStep:
        if (self.clip is None) == (self.fill is None):
            raise ValueError(f"pre step on {self.field!r}: give exactly one of `clip` or `fill`")
        if self.clip is not None and self.clip[0] > self.clip[1]:
            raise ValueError(f"pre step on {self.field!r}: clip {list(self.clip)} has its low end above its high end")
        return self


class RoutinePost(Strict):
    """Post-processing of the combined prediction: clip to [lo, hi], then round to `round` digits."""

    clip: tuple[float, float] | None = None
    round: int | None = Field(None, ge=0, le=12)

    @model_validator(mode="after")
    def _ordered(self) -> RoutinePost:
        if self.clip is not None and self.clip[0] > self.clip[1]:
            raise ValueError(f"post clip {list(self.clip)} has its low end above its high end")
        return self


class RoutineSpec(Strict):
    """A composite prediction routine: several registered models called as one, served and governed as a unit."""

    name: Name
    components: list[RoutineComponent] = Field(min_length=1)
    combine: Literal["mean", "weighted_mean", "gate"] = "mean"
    weights: dict[Name, float] | None = None
    gate: RoutineGate | None = None
    pre: list[RoutineStep] = Field(default_factory=list)
    post: RoutinePost | None = None
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> RoutineSpec:
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError(f"component names must be unique: {names}")
        if (self.weights is not None) != (self.combine == "weighted_mean"):
            raise ValueError("`weights` go with combine: weighted_mean (and only with it)")
        if (self.gate is not None) != (self.combine == "gate"):
            raise ValueError("`gate` goes with combine: gate (and only with it)")
        if self.weights is not None:
            if set(self.weights) != set(names):
                raise ValueError(f"weights must name every component exactly: {sorted(names)}, "
                                 f"not {sorted(self.weights)}")
            if any(w < 0 for w in self.weights.values()) or abs(sum(self.weights.values()) - 1) > 1e-9:
                raise ValueError(f"weights must be non-negative and sum to 1; they sum to {sum(self.weights.values()):g}")
        if self.gate is not None:
            used = [self.gate.component, self.gate.then, *([self.gate.else_] if isinstance(self.gate.else_, str) else [])]
            unknown = [u for u in used if u not in names]
            if unknown:
                raise ValueError(f"the gate names unknown component {unknown[0]!r}; components: {names}")
            unused = [n for n in names if n not in used]
            if unused:
                raise ValueError(f"component {unused[0]!r} is declared but the gate never calls it")
        return self


PRIMARY_METRICS = {"binary": ("auc", "pr_auc", "log_loss", "brier", "accuracy"),
                   "multiclass": ("log_loss", "accuracy", "macro_f1"),
                   "regression": ("rmse", "mae", "r2")}


class Project(Strict):
    """One project file: a dataset's whole lifecycle."""

    name: Name
    description: str
    model_name: Name
    code: str | None = Field(None, description="the project's Python module (relative path) with named functions")
    start: str = Field(pattern=r"^\d{4}-\d{2}(-\d{2})?$", description="first period of the periodic sources")
    granularity: Granularity = "month"
    sources: dict[Name, SourceSpec]
    entities: dict[Name, list[Name]] = Field(default_factory=dict)
    feature_views: dict[Name, FeatureViewSpec] = Field(default_factory=dict)
    examples: ExamplesSpec
    label: LabelSpec
    problem: Literal["binary", "multiclass", "regression"]
    classes: list[str] | None = None
    prediction_time: PredictionTimeSpec
    request: RequestSpec
    features: list[Name] = Field(default_factory=list, description="example columns used directly as features")
    categorical: list[Name] = Field(default_factory=list)
    views: list[Name] | None = Field(None, description="views the model uses (default: all)")
    metric: str | None = None
    threshold: float = Field(0.5, gt=0, lt=1)
    slices: list[Name | BinSlice] = Field(default_factory=list)
    split: SplitSpec = SplitSpec()
    tuning: TuningSpec = TuningSpec()
    gate: GateSpec = GateSpec()
    infra: InfraSpec = InfraSpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    backtest: BacktestSpec = BacktestSpec()
    rollout: RolloutSpec = RolloutSpec()
    promotion: Literal["auto", "manual", "rollout"] = "auto"
    routine: RoutineSpec | None = None

    @model_validator(mode="after")
    def _routine_fits(self) -> Project:
        """What a routine cannot do for this project (a multiclass answer has no single value to gate or clip)."""
        routine = self.routine
        if routine is None:
            return self
        if self.problem == "multiclass" and (routine.gate is not None or routine.post is not None):
            raise ValueError("routine: a multiclass routine can only average its components (no gate, no post)")
        if self.promotion == "rollout":
            raise ValueError("routine: promotion: rollout serves a challenger beside the champion; "
                             "a routine serves its components as one unit")
        return self

    @property
    def primary_metric(self) -> str:
        return self.metric or PRIMARY_METRICS[self.problem][0]

    @property
    def used_views(self) -> list[str]:
        return list(self.feature_views) if self.views is None else list(self.views)

    @property
    def periodic_sources(self) -> list[str]:
        return [n for n, s in self.sources.items() if s.kind == "periodic"]

    @property
    def reference_sources(self) -> list[str]:
        return [n for n, s in self.sources.items() if s.kind == "reference"]
