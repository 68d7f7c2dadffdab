"""The trained model on the training side: the scoring contract plus pandas in, pandas out.

`TabularModel` is a `ScoringModel` (what serving and batch scoring use, no training code) with
the frame-based methods training and evaluation need. Categorical levels are frozen at training
time, so an unseen category is a missing value (LightGBM's documented handling), never a silent
re-coding. A multiclass model also freezes its class order: column j of its probabilities is
`classes[j]`. The registry stores `ScoringPyfunc(model)`, a plain ScoringModel copy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl

from mlops_assets.scoring_model import ScoringModel


class TabularModel(ScoringModel):
    """A ScoringModel that scores pandas frames, the way the trainer built its LightGBM datasets."""

    @classmethod
    def from_scoring(cls, model: ScoringModel) -> TabularModel:
        """The training-side view of a loaded (registered) model."""
        if isinstance(model, cls):
            return model
        return cls(model.booster, list(model.features), {k: list(v) for k, v in model.categorical_levels.items()},
                   model.problem, model.classes, model.threshold)

    def frame(self, data: pd.DataFrame) -> pd.DataFrame:
        """Model inputs in training order and dtypes; missing columns are an error naming them."""
        missing = [f for f in self.features if f not in data.columns]
        if missing:
            raise KeyError(f"model inputs missing: {missing}")
        columns = []
        for name in self.features:
            if name in self.categorical_levels:
                levels = pd.Categorical(data[name].astype("object"), categories=self.categorical_levels[name])
                columns.append(pd.Series(levels, index=data.index, name=name))
            else:
                columns.append(pd.to_numeric(data[name], errors="raise").astype("float64").rename(name))
        # side by side, not consolidated into one block: LightGBM copies the frame into its own matrix
        # anyway, and the consolidating copy cost 1.8 s of a year's training set (of 2.3 s)
        return pd.concat(columns, axis=1, copy=False) if columns else pd.DataFrame(index=data.index)

    def predict(self, data: pd.DataFrame) -> np.ndarray:
        """Positive-class probability (binary), an (n, k) matrix in `classes` order (multiclass), or values."""
        return np.asarray(self.booster.predict(self.frame(data), num_threads=1))

    def decisions(self, scores: np.ndarray) -> np.ndarray:
        """What a caller acts on: positive at the threshold, the most probable class, or the value."""
        if self.problem == "binary":
            return scores >= self.threshold
        if self.problem == "multiclass":
            return np.asarray(self.classes, dtype=object)[np.asarray(scores).argmax(axis=1)]
        return scores

    def contributions(self, data: pd.DataFrame, num_threads: int = 1) -> np.ndarray:
        """TreeSHAP (n, features + 1), multiclass (n, k * (features + 1)) class after class; raw score units.

        One thread by default, as for scoring; a batch job (evaluation) passes 0 for all cores.
        """
        return np.asarray(self.booster.predict(self.frame(data), pred_contrib=True, num_threads=num_threads))


def label_classes(problem: str, declared: list[str] | None, *labels: pl.Series) -> list[str] | None:
    """The class order of a multiclass model: as declared, else the sorted observed classes.

    A label outside the declared classes is an error naming it (it would otherwise be dropped).
    """
    if problem != "multiclass":
        return None
    seen = sorted({str(v) for series in labels for v in series.drop_nulls().to_list()})
    if declared is None:
        if len(seen) < 2:
            raise ValueError(f"a multiclass label needs at least 2 classes, the data has {seen}")
        return seen
    unknown = sorted(set(seen) - set(declared))
    if unknown:
        raise ValueError(f"label classes {unknown} are not in the project's classes {declared}")
    return list(declared)


def encode_labels(labels: pl.Series, problem: str, classes: list[str] | None) -> np.ndarray:
    """Labels as LightGBM and the metrics take them: 0/1, class codes in `classes` order, or floats."""
    if labels.null_count():
        raise ValueError(f"label column {labels.name!r} has {labels.null_count()} missing values")
    if problem != "multiclass":
        return labels.cast(pl.Float64).to_numpy()
    codes = {label: float(code) for code, label in enumerate(classes or [])}
    text = labels.cast(pl.String)
    unknown = sorted(set(text.unique().to_list()) - set(codes))
    if unknown:
        raise ValueError(f"label classes {unknown} are unknown to the model (classes {classes})")
    return text.replace_strict(codes, return_dtype=pl.Float64).to_numpy()


def categorical_levels(frame: pd.DataFrame, columns: list[str]) -> dict[str, list[str]]:
    """Sorted observed levels per categorical column (nulls excluded)."""
    return {c: sorted(frame[c].dropna().astype(str).unique().tolist()) for c in columns}


def client_frame(data: pd.DataFrame, model: TabularModel) -> pd.DataFrame:
    """Inputs as a client sends them: text for categories, float for numbers (nulls allowed)."""
    out = data[model.features].copy()
    for name in model.features:
        if name in model.categorical_levels:
            out[name] = out[name].astype("object")
        else:
            out[name] = pd.to_numeric(out[name]).astype("float64")
    return out


def optional_signature(example: pd.DataFrame, predictions: np.ndarray):
    """Signature with every input optional: online features may be missing at serving time."""
    from mlflow.models import infer_signature
    from mlflow.types.schema import ColSpec, Schema

    inferred = infer_signature(example, predictions)
    inputs = Schema([ColSpec(c.type, c.name, required=False) for c in inferred.inputs.inputs])
    return inferred.__class__(inputs=inputs, outputs=inferred.outputs)
