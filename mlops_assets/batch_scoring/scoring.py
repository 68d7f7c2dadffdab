"""Batch inference: a period's examples scored by a model with features as of each prediction time.

The features come from the training set's own offline computation, so a batch score equals what
the model would have said online at that moment (given the same events), and equals the
training-time scoring of the same row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from mlops_assets.contract import LOG_PREDICTION, PERIOD, PREDICTION_TIME
from mlops_assets.project.spec import Project

OfflineFeatures = Callable[[Project, pl.DataFrame, dict[str, pl.DataFrame]], pl.DataFrame]


def model_matrix(model: Any, frame: pl.DataFrame) -> np.ndarray:
    """The float matrix `ScoringModel.matrix` builds from row dicts, built column-wise (categories as
    their index in the frozen levels, unseen or missing as NaN; numbers as floats)."""
    columns = []
    for name in model.features:
        levels = model.categorical_levels.get(name)
        if levels is None:
            columns.append(pl.col(name).cast(pl.Float64, strict=False).fill_nan(None).alias(name))
        else:
            codes = pl.col(name).cast(pl.String).replace_strict(levels, list(range(len(levels))), default=None,
                                                                return_dtype=pl.Float64)
            columns.append(codes.alias(name))
    return frame.select(columns).to_numpy().astype(np.float64)


def prediction_columns(project: Project, raw: np.ndarray, classes: list[str] | None = None) -> list[pl.Series]:
    """What a prediction is per problem, as the prediction log writes it.

    Binary: `prediction` = `probability` of the positive class, `decision` at the project threshold;
    regression: the value; multiclass: the most probable class and `probabilities` by class.
    """
    if project.problem == "binary":
        probability = pl.Series("probability", raw, dtype=pl.Float64)
        return [probability.alias(LOG_PREDICTION), probability, (probability >= project.threshold).alias("decision")]
    if project.problem == "regression":
        return [pl.Series(LOG_PREDICTION, raw, dtype=pl.Float64)]
    names = classes or project.classes
    if not names or raw.ndim != 2 or raw.shape[1] != len(names):
        raise ValueError(f"multiclass scores {raw.shape} do not match the classes {names}")
    probabilities = pl.DataFrame(raw, schema=[str(c) for c in names], orient="row").to_struct("probabilities")
    return [pl.Series(LOG_PREDICTION, [names[i] for i in raw.argmax(axis=1)], dtype=pl.String), probabilities]


def score(model: Any, frame: pl.DataFrame) -> np.ndarray:
    """The model's raw output for every row: P(positive), the class probabilities, or the value."""
    if frame.height == 0:
        width = len(model.classes) if getattr(model, "problem", "") == "multiclass" else 0
        return np.empty((0, width)) if width else np.empty(0)
    return np.asarray(model.predict_matrix(model_matrix(model, frame)))


def score_examples(project: Project, examples: pl.DataFrame, views: dict[str, pl.DataFrame], model: Any,
                   model_version: str, compute: OfflineFeatures) -> pl.DataFrame:
    """Every example scored with features as of its prediction time: ids, prediction time, prediction, version."""
    if PREDICTION_TIME not in examples.columns:
        raise ValueError(f"the examples lack {PREDICTION_TIME!r}: build them with training_set.examples_frame")
    label = project.label.name
    queries = examples.drop(label, strict=False)
    featured = compute(project, queries, views)
    raw = score(model, featured)
    keep = [*dict.fromkeys([*project.examples.id, PREDICTION_TIME]), *([PERIOD] if PERIOD in featured.columns else [])]
    return featured.select(keep).with_columns(
        *prediction_columns(project, raw, getattr(model, "classes", None)),
        pl.lit(project.model_name).alias("model_name"), pl.lit(str(model_version)).alias("model_version"),
    )
