"""The trained model as serving sees it: LightGBM booster plus the input contract.

Categorical levels are frozen at training time, so an unseen category at serving time is a
missing value (LightGBM's documented handling), never a silent re-coding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import mlflow.pyfunc
import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import lightgbm as lgb


@dataclass
class TabularModel:
    """A booster with the exact feature order, categorical levels, task kind and threshold."""

    booster: lgb.Booster
    features: list[str]
    categorical_levels: dict[str, list[str]]
    problem: str
    threshold: float

    def frame(self, data: pd.DataFrame) -> pd.DataFrame:
        """Model inputs in training order and dtypes; missing columns are an error naming them."""
        missing = [f for f in self.features if f not in data.columns]
        if missing:
            raise KeyError(f"model inputs missing: {missing}")
        out = {}
        for name in self.features:
            if name in self.categorical_levels:
                out[name] = pd.Categorical(data[name].astype("object"), categories=self.categorical_levels[name])
            else:
                out[name] = pd.to_numeric(data[name], errors="raise").astype("float64")
        return pd.DataFrame(out, index=data.index)

    def predict(self, data: pd.DataFrame) -> np.ndarray:
        """Probability of the positive class (binary) or the predicted value (regression)."""
        return self.booster.predict(self.frame(data), num_threads=1)

    def contributions(self, data: pd.DataFrame) -> np.ndarray:
        """TreeSHAP contributions (n_rows x n_features + bias), in raw score units."""
        return self.booster.predict(self.frame(data), pred_contrib=True, num_threads=1)

    @cached_property
    def level_codes(self) -> dict[str, dict[str, int]]:
        """Category -> code per categorical: the index in the frozen levels, as pandas codes them."""
        return {name: {level: code for code, level in enumerate(levels)}
                for name, levels in self.categorical_levels.items()}

    def matrix(self, rows: Sequence[Mapping[str, object]]) -> np.ndarray:
        """Float64 inputs without pandas (the serving fast path), equal to what `frame` feeds LightGBM.

        Categories become their code in the frozen levels (unseen -> NaN, like pandas' -1);
        numbers become floats; an absent key or None is a missing value (NaN).
        """
        out = np.full((len(rows), len(self.features)), np.nan, dtype=np.float64)
        plan = [(j, name, self.level_codes.get(name)) for j, name in enumerate(self.features)]
        for i, row in enumerate(rows):
            for j, name, codes in plan:
                value = row.get(name)
                if value is None:
                    continue
                if codes is None:
                    out[i, j] = float(value)  # type: ignore[arg-type]
                elif isinstance(value, str) and value in codes:
                    out[i, j] = codes[value]
        return out

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """`predict` on a matrix from `matrix` (single-threaded: one request, no pool start-up)."""
        return self.booster.predict(matrix, num_threads=1)

    def contributions_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """`contributions` on a matrix from `matrix`: TreeSHAP per feature plus the bias, in log-odds."""
        return self.booster.predict(matrix, pred_contrib=True, num_threads=1)


class PyfuncModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper: what the registry stores and serving loads."""

    def __init__(self, model: TabularModel) -> None:
        self.model = model

    def predict(self, context: object, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        return self.model.predict(model_input)


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
