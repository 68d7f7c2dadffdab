"""What one scored instance answers, per problem type, and its explanation.

binary -> probability, decision at the project's threshold; multiclass -> a probability per class
and the predicted class; regression -> the predicted value. Explanations are TreeSHAP in the raw
score the model sums (log-odds, the value, or the predicted class's softmax input).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mlops_assets.explain import explanation
from mlops_assets.scoring_model import ScoringModel


def clean(value: object) -> object:
    """NaN is not JSON: report it as null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def outcome(model: ScoringModel, output: np.ndarray, threshold: float) -> dict[str, object]:
    """The prediction fields of one instance from its row of `predict_matrix`."""
    if model.problem == "binary":
        probability = float(output)
        return {"probability": probability, "decision": probability >= threshold, "threshold": threshold}
    if model.problem == "multiclass":
        assert model.classes is not None
        probabilities = [float(p) for p in np.asarray(output).ravel()]
        best = int(np.argmax(probabilities))
        return {"probabilities": dict(zip(model.classes, probabilities, strict=True)),
                "predicted_class": model.classes[best]}
    return {"prediction": float(output)}


def logged_prediction(fields: Mapping[str, object]) -> object:
    """The one value monitoring reads as `prediction`: probability, predicted class or value."""
    for name in ("probability", "predicted_class", "prediction"):
        if name in fields:
            return fields[name]
    return None


def explain_one(model: ScoringModel, contributions: np.ndarray, row: Mapping[str, object], k: int,
                fields: Mapping[str, object]) -> dict[str, object]:
    """Top-k contributions of one instance (multiclass: of its predicted class)."""
    if model.problem != "multiclass":
        return explanation(contributions, model.features, row, k, model.problem)
    assert model.classes is not None
    predicted = str(fields["predicted_class"])
    index = model.classes.index(predicted)
    return explanation(contributions[index], model.features, row, k, model.problem, predicted)


def component_prediction(model: ScoringModel, output: np.ndarray | None) -> object:
    """What a routine's component said for one instance (None: the routine did not call it for this one)."""
    if output is None:
        return None
    return logged_prediction(outcome(model, output, model.threshold)) if model.problem != "multiclass" else \
        outcome(model, output, model.threshold)["probabilities"]
