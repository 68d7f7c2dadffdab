"""Experimentation: what a data scientist's notebook calls to explore, try a variant and hand it back.

The notebooks under notebooks/ read the project's own stores (the lake's feature repository and
the pipeline's MLflow experiment), train exactly as the pipeline's first trial does, track every
try as an exploration run next to the pipeline's candidates, and promote the winning parameters
into the project file as a small, reviewable diff (`tuning.start_params`).
"""

from __future__ import annotations

import difflib
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import polars as pl

from mlops_assets.contract import PERIOD, PREDICTION_TIME, SPLIT
from mlops_assets.evaluation import plots
from mlops_assets.evaluation.evaluate import evaluate_scores, truth
from mlops_assets.evaluation.metrics import higher_is_better
from mlops_assets.evaluation.windows import training_windows
from mlops_assets.features.assets import load_prepared
from mlops_assets.features.repository import model_features, offline_features, view_keys
from mlops_assets.lake import Lake
from mlops_assets.project.loading import LoadedProject, load_project
from mlops_assets.project.spec import Project, TuningSpec
from mlops_assets.settings import DATA_DIR, default_tracking_uri, project_path, state_dir
from mlops_assets.tracking import MlflowResource, code_version, log_bytes
from mlops_assets.training.mlflow_logging import project_tags
from mlops_assets.training.model import TabularModel
from mlops_assets.training.training_set import assign_splits, content_hash, examples_frame
from mlops_assets.training.tuning import TrainedCandidate, metric_spec, train_candidate

EXPLORATION_TAG = "mlops.exploration"
PERIOD_RANGE = re.compile(r"^\s*(\d{4}-\d{2}(?:-\d{2})?)\s*\.\.\s*(\d{4}-\d{2}(?:-\d{2})?)\s*$")


@dataclass(frozen=True)
class Workspace:
    """The project and the stores the pipeline uses for it: lake (feature repository) and MLflow."""

    project: LoadedProject
    lake: Lake
    tracking: MlflowResource


def open_workspace() -> Workspace:
    """MLOPS_PROJECT's file, state folder and MLflow store, with explicit URIs, as the pipeline's resources."""
    state = state_dir()
    tracking = MlflowResource(tracking_uri=default_tracking_uri(), artifact_root=str(state / "mlflow" / "artifacts"))
    return Workspace(load_project(project_path()), Lake(root=state, data_dir=DATA_DIR), tracking)


def parse_period_range(text: str) -> tuple[str, str] | None:
    """'2013-01..2013-03' -> ('2013-01', '2013-03'); empty -> None (every ingested period)."""
    if not text.strip():
        return None
    match = PERIOD_RANGE.match(text)
    if not match or match[1] > match[2]:
        raise ValueError(f"{text!r} is not a period range; write FIRST..LAST, e.g. 2013-01..2013-03")
    return match[1], match[2]


def entity_frame(ws: Workspace, periods: tuple[str, str] | None = None) -> pl.DataFrame:
    """The project's labelled examples (keys, request fields, prediction time, label, period) in a period range."""
    spec = ws.project.spec
    frame = examples_frame(ws.project, load_prepared(ws.lake, ws.project, [spec.examples.source]))
    if periods is not None:
        frame = frame.filter(pl.col(PERIOD).is_between(pl.lit(periods[0]), pl.lit(periods[1])))
    if frame.height == 0:
        raise ValueError(f"no examples in periods {periods}; ingested: {ws.lake.available_periods(spec.examples.source)}")
    return frame


def training_frame(ws: Workspace, entities: pl.DataFrame) -> pl.DataFrame:
    """Any entity frame (all examples, a sample, a hand-picked subset) with every view's features exactly
    as of each row's prediction time, from the feature repository, split by time as the pipeline splits."""
    spec = ws.project.spec
    needed = [spec.label.name, PREDICTION_TIME, PERIOD, *(k for v in spec.feature_views for k in view_keys(spec, v))]
    missing = sorted(set(needed) - set(entities.columns))
    if missing:
        raise ValueError(f"the entity frame lacks columns {missing}; start from entity_frame()")
    views = {}
    for name in spec.feature_views:
        try:
            views[name] = ws.lake.read_view(name)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{exc}; run feature_repository_job first") from None
    return assign_splits(offline_features(spec, entities, views, list(views)), spec)


@dataclass(frozen=True)
class Variant:
    """One tracked try: the trained candidate (one trial), its test metrics and the MLflow run recording it."""

    name: str
    candidate: TrainedCandidate
    test_metrics: dict[str, float]
    run_id: str
    experiment_id: str

    @property
    def model(self) -> TabularModel:
        return self.candidate.model

    @property
    def params(self) -> dict[str, float | int]:
        return self.candidate.params


def _split(frame: pl.DataFrame, role: str) -> pl.DataFrame:
    return frame.filter(pl.col(SPLIT) == role)


def variant_spec(project: Project, params: dict[str, float | int] | None) -> Project:
    """The project with one trial whose parameters are `params` (None: the project file's own first trial)."""
    start = project.tuning.start_params if params is None else params
    tuning = TuningSpec.model_validate({**project.tuning.model_dump(), "n_trials": 1, "start_params": start})
    return project.model_copy(update={"tuning": tuning})


def train_variant(ws: Workspace, frame: pl.DataFrame, name: str,
                  params: dict[str, float | int] | None = None) -> Variant:
    """Fit exactly as the pipeline's first trial does (same early stopping, fixed parameters, features),
    score the test periods, and record it as an exploration run in the pipeline's experiment."""
    spec = variant_spec(ws.project.spec, params)
    candidate = train_candidate(_split(frame, "train"), _split(frame, "validation"), spec, model_features(spec))
    test = _split(frame, "test")
    overall = evaluate_scores(test, candidate.model.predict(test.to_pandas()), spec, candidate.model.classes).overall
    experiment_id = ws.tracking.configure()
    tags = {EXPLORATION_TAG: "true", "exploration_name": name, **project_tags(ws.project), "problem": spec.problem,
            "training_set_hash": content_hash(frame), "code_version": code_version(), **training_windows(frame)}
    metric = metric_spec(spec)[0]
    with mlflow.start_run(run_name=f"exploration-{name}", tags=tags) as run:
        mlflow.log_params({**candidate.params, "best_iteration": candidate.best_iteration})
        mlflow.log_metrics({f"valid_{metric}": candidate.validation_score,
                            **{f"test_{k}": v for k, v in overall.items() if math.isfinite(v)}})
    return Variant(name, candidate, overall, run.info.run_id, experiment_id)


def compare(project: Project, variants: list[Variant]) -> pl.DataFrame:
    """One row per variant, the best on the project's primary metric (test periods) first."""
    primary = project.primary_metric
    rows = [{"variant": v.name, "run_id": v.run_id,
             f"valid_{v.candidate.validation_metric}": v.candidate.validation_score,
             **{f"test_{k}": x if math.isfinite(x) else None for k, x in v.test_metrics.items()},
             "params": str(v.params)} for v in variants]
    return pl.DataFrame(rows).sort(f"test_{primary}", descending=higher_is_better(primary), nulls_last=True)


def best_variant(project: Project, variants: list[Variant]) -> Variant:
    winner = compare(project, variants)["variant"][0]
    return next(v for v in variants if v.name == winner)


def evaluation_png(project: Project, frame: pl.DataFrame, variant: Variant) -> bytes:
    """The problem's own chart of a variant on the test periods: ROC, confusion matrix or residuals."""
    test = _split(frame, "test")
    y, scores = truth(test, project, variant.model.classes), variant.model.predict(test.to_pandas())
    if project.problem == "binary" and np.unique(y).size == 2:
        return plots.roc_curve_png(y, scores)
    if project.problem == "multiclass":
        return plots.confusion_matrix_png(y, scores, variant.model.classes or [])
    return plots.residuals_png(y, scores)


def log_evaluation_plots(ws: Workspace, frame: pl.DataFrame, variants: list[Variant]) -> list[bytes]:
    """Each variant's chart of the test periods, kept in its run (plots/evaluation.png) and returned to show."""
    charts = [evaluation_png(ws.project.spec, frame, v) for v in variants]
    for variant, png in zip(variants, charts, strict=True):
        log_bytes(variant.run_id, png, "plots/evaluation.png")
    return charts


def experiment_runs(ws: Workspace, limit: int = 50) -> pl.DataFrame:
    """The project's top-level runs in the pipeline's experiment, newest first: candidates and explorations."""
    client = ws.tracking.client()
    experiment_id = ws.tracking.configure()
    runs = client.search_runs([experiment_id], f"tags.project = '{ws.project.spec.name}'",
                              order_by=["attributes.start_time DESC"], max_results=limit)
    metric = f"valid_{metric_spec(ws.project.spec)[0]}"
    return pl.DataFrame([{
        "run_name": r.info.run_name, "kind": "exploration" if r.data.tags.get(EXPLORATION_TAG) == "true" else "pipeline",
        metric: r.data.metrics.get(metric), "training_set_hash": r.data.tags.get("training_set_hash"),
        "run_id": r.info.run_id} for r in runs if "mlflow.parentRunId" not in r.data.tags],
        schema={"run_name": pl.String, "kind": pl.String, metric: pl.Float64, "training_set_hash": pl.String,
                "run_id": pl.String})


def promote_parameters(project_file: Path, params: dict[str, float | int]) -> str:
    """Write `params` as `tuning.start_params` into the project file, touching only the `tuning` block
    (comments and layout elsewhere stay byte for byte); returns the unified diff. The edited file must
    load, else it is not written."""
    before = project_file.read_text()
    after = with_start_params(before, {k: _plain(v) for k, v in params.items()})
    candidate = project_file.with_name(f".{project_file.name}.promoted")
    candidate.write_text(after)
    try:
        load_project(candidate)
    finally:
        candidate.unlink()
    project_file.write_text(after)
    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                        str(project_file), str(project_file)))


def _plain(value: float | int) -> float | int:
    """numpy scalars as plain YAML numbers."""
    return int(value) if isinstance(value, int | np.integer) else float(value)


def with_start_params(text: str, params: dict[str, float | int]) -> str:
    """The project text with `tuning.start_params` set: only the top-level `tuning` block is re-emitted
    (by ruamel.yaml, which keeps its flow or block style and its comments); no block: one is appended."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.error import YAMLError

    yaml = YAML()
    yaml.width, yaml.preserve_quotes = 4096, True
    yaml.indent(mapping=2, sequence=4, offset=2)
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"^tuning\s*:", line)), len(lines))
    end = start + 1
    while end < len(lines) and (lines[end][:1] in (" ", "\t") or not lines[end].strip()):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    try:
        data = yaml.load("".join(lines[start:end])) or CommentedMap(tuning=None)
    except YAMLError as exc:
        raise ValueError(f"the project file's `tuning` block cannot be edited on its own ({exc}); "
                         "set tuning.start_params by hand") from None
    if data["tuning"] is None:
        data["tuning"] = CommentedMap()
    values = CommentedMap(params)
    values.fa.set_flow_style()
    data["tuning"]["start_params"] = values
    block = io.StringIO()
    yaml.dump(data, block)
    head = "".join(lines[:start])
    if head and not head.endswith("\n"):
        head += "\n"
    return head + block.getvalue() + "".join(lines[end:])
