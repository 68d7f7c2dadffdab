"""The scoring interface of a trained model: what serving, batch scoring and probes need, no training code.

A LightGBM booster plus its input contract (feature order, frozen categorical levels, problem,
classes). Categories become their index in the frozen levels, exactly as pandas codes a
`Categorical` with those categories, so a booster trained on a pandas frame scores a float
matrix built here identically; an unseen category is a missing value (LightGBM's handling).

The registry stores `ScoringPyfunc(model)`: it keeps a plain `ScoringModel` copy, so unpickling a
registered model imports this module only, never the trainer's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import mlflow.pyfunc
import numpy as np
import pandas as pd

Problem = Literal["binary", "multiclass", "regression"]
PROBLEMS = ("binary", "multiclass", "regression")


@dataclass
class ScoringModel:
    """A booster with the exact feature order, categorical levels, problem and (multiclass) classes.

    `classes[i]` is the class whose label code is i (multiclass: required; binary: optional names
    of the negative and positive class). `threshold` is the trainer's; serving decides with the
    project's threshold.
    """

    booster: Any
    features: list[str]
    categorical_levels: dict[str, list[str]]
    problem: Problem
    classes: list[str] | None = None
    threshold: float = 0.5
    _codes: dict[str, dict[str, int]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _numeric: list[int] = field(default_factory=list, init=False, repr=False, compare=False)  # numeric positions
    _trees: Any = field(default=None, init=False, repr=False, compare=False)  # CompiledTrees once `compile` passed

    def __post_init__(self) -> None:
        if self.problem not in PROBLEMS:
            raise ValueError(f"problem must be one of {PROBLEMS}, not {self.problem!r}")
        if self.problem == "multiclass" and (not self.classes or len(self.classes) < 2):
            raise ValueError("a multiclass model needs `classes` (at least 2, in label-code order)")
        unknown = sorted(set(self.categorical_levels) - set(self.features))
        if unknown:
            raise ValueError(f"categorical levels for columns that are not features: {unknown}")
        self._codes = {n: {level: code for code, level in enumerate(levels)}
                       for n, levels in self.categorical_levels.items()}
        self._numeric = [j for j, n in enumerate(self.features) if n not in self._codes]

    @classmethod
    def adopt(cls, model: Any) -> ScoringModel:
        """A plain ScoringModel from any object with the same attributes (e.g. the trainer's subclass)."""
        if type(model) is cls:
            return model
        return cls(model.booster, list(model.features), {k: list(v) for k, v in model.categorical_levels.items()},
                   model.problem, getattr(model, "classes", None), float(getattr(model, "threshold", 0.5)))

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.pop("_codes", None)
        state.pop("_numeric", None)
        state.pop("_trees", None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self.problem == "multiclass" and self.classes else 1

    def unseen(self, row: Mapping[str, object]) -> list[str]:
        """Categorical inputs of a row whose value the model never saw (they score as missing)."""
        return [n for n, codes in self._codes.items() if row.get(n) is not None and row.get(n) not in codes]

    def unseen_columns(self, columns: Mapping[str, Sequence[object]], n: int) -> list[list[str]]:
        """`unseen` of n rows given as columns by name (a column not given: nothing unseen in it)."""
        out: list[list[str]] = [[] for _ in range(n)]
        for name, codes in self._codes.items():
            column = columns.get(name)
            if column is not None:
                for i, value in enumerate(column):
                    if value is not None and value not in codes:
                        out[i].append(name)
        return out

    def matrix(self, rows: Sequence[Mapping[str, object]]) -> np.ndarray:
        """`matrix_columns` of rows (an absent key is a missing value)."""
        return self.matrix_columns([[row.get(name) for row in rows] for name in self.features], len(rows))

    def matrix_columns(self, columns: Sequence[Sequence[object]], n: int) -> np.ndarray:
        """Float64 inputs from one column per feature, in feature order: categories as level codes (unseen
        -> NaN), numbers as floats, None as a missing value (NaN). The numbers of all columns go through one
        numpy conversion, the categories a comprehension each: serving's batch path."""
        out = np.empty((n, len(self.features)), dtype=np.float64)
        positions = self._numeric
        if positions and n:
            out[:, positions] = np.array([columns[j] for j in positions], dtype=np.float64).T
        nan = math.nan
        for j, name in enumerate(self.features):
            codes = self._codes.get(name)
            if codes is not None:
                out[:, j] = [codes.get(v, nan) if isinstance(v, str) else nan  # type: ignore[arg-type]
                             for v in columns[j]]
        return out

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Binary: P(positive) (n,); multiclass: class probabilities (n, classes); regression: values (n,).
        The compiled trees once `compile` has checked them, else LightGBM (the same values to the bit)."""
        if self._trees is not None:
            return self._trees.predict(matrix)
        return np.asarray(self.booster.predict(matrix, num_threads=1))

    def compile(self) -> str:
        """Score with the booster's trees compiled (`compiled_trees`: ~1 µs a row where LightGBM's predict
        spends ~14) if they score probe rows on every split exactly as LightGBM does; '' then, else why not
        (LightGBM keeps scoring)."""
        from mlops_assets.compiled_trees import agrees, compile_trees, probe_matrix

        self._trees = None
        trees = compile_trees(self.booster)
        if trees is None:
            return "the booster has linear trees, averaged output or an objective whose transform is not reproduced"
        if trees.n_features != len(self.features):
            return f"the booster reads {trees.n_features} features, the model declares {len(self.features)}"
        counts = {j: len(self.categorical_levels[n]) for j, n in enumerate(self.features) if n in self.categorical_levels}
        if not agrees(trees, self.booster, probe_matrix(trees.numeric_splits(), len(self.features), counts)):
            return "the compiled trees do not score the probe rows exactly as LightGBM does"
        self._trees = trees
        return ""

    @property
    def compiled(self) -> bool:
        return self._trees is not None

    def contributions_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """TreeSHAP per feature plus the bias, in raw-score units: (n, features + 1), or for multiclass
        (n, classes, features + 1) (LightGBM concatenates the classes)."""
        raw = np.asarray(self.booster.predict(matrix, pred_contrib=True, num_threads=1))
        if self.problem == "multiclass":
            return raw.reshape(len(matrix), self.n_classes, len(self.features) + 1)
        return raw


class ScoringPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper: what the registry stores and serving loads (`.model` is a ScoringModel)."""

    def __init__(self, model: Any) -> None:
        self.model = ScoringModel.adopt(model)

    def predict(self, context: object, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        """A pandas frame of client inputs (text categories, numbers) -> `predict_matrix` of it."""
        rows = [{k: _present(v) for k, v in r.items()} for r in model_input.to_dict("records")]
        return self.model.predict_matrix(self.model.matrix(rows))


def _present(value: object) -> object:
    """None for pandas' missing markers (None, NaN, NA, NaT), the value otherwise."""
    try:
        return None if value is None or bool(value != value) else value
    except TypeError:
        return None
