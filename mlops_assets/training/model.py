"""The trained model as serving sees it: LightGBM booster plus the input contract.

Categorical levels are frozen at training time, so an unseen category at serving time is a
missing value (LightGBM's documented handling), never a silent re-coding.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import mlflow.pyfunc
import numpy as np
import pandas as pd


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
