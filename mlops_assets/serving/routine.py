"""A composite prediction routine's arithmetic: pre-steps, each component's scores, the combination, post-steps.

Pure functions over scoring models and rows (no registry, no HTTP), so the service, a test or a batch
job compute exactly the same answer. A gate calls its second model only on the rows the gate lets
through; a mean calls every component. Every component's own output is kept (None where it did not
score) so answers and log records can say what each one said.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mlops_assets.project.spec import RoutinePost, RoutineSpec, RoutineStep
from mlops_assets.scoring_model import ScoringModel

if TYPE_CHECKING:
    from mlops_assets.serving.models import LoadedModel


@dataclass(frozen=True)
class LoadedRoutine:
    """A routine's components as served together (component name -> loaded model), in declared order."""

    spec: RoutineSpec
    components: dict[str, LoadedModel]

    @property
    def versions(self) -> dict[str, tuple[str, str]]:
        return {c: (m.name, m.version) for c, m in self.components.items()}

    @property
    def label(self) -> str:
        """The set's version as logs and answers name it, e.g. 'main=3,small=1'."""
        return ",".join(f"{c}={m.version}" for c, m in self.components.items())


class RoutineMismatch(ValueError):
    """Components (or steps) that cannot form the declared routine: refused before a swap."""


def check_components(spec: RoutineSpec, models: Mapping[str, ScoringModel]) -> None:
    """One problem and one class list for all; a clip or fill that fits every component reading its field."""
    first = next(iter(models.values()))
    for name, model in models.items():
        if model.problem != first.problem or model.classes != first.classes:
            raise RoutineMismatch(f"component {name!r} is a {model.problem} model with classes {model.classes}; "
                                  f"the routine's first component is {first.problem} with {first.classes}")
    for step in spec.pre:
        readers = {n: m for n, m in models.items() if step.field in m.features}
        if not readers:
            raise RoutineMismatch(f"pre step on {step.field!r}: no component reads that input")
        for name, model in readers.items():
            categorical = step.field in model.categorical_levels
            if step.clip is not None and categorical:
                raise RoutineMismatch(f"pre step on {step.field!r}: component {name!r} reads it as a category; "
                                      "only numbers can be clipped")
            if step.fill is not None and categorical != isinstance(step.fill, str):
                kind = "a category" if categorical else "a number"
                raise RoutineMismatch(f"pre step on {step.field!r}: component {name!r} reads it as {kind}; "
                                      f"fill {step.fill!r} does not fit")


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def preprocess(steps: Sequence[RoutineStep], row: Mapping[str, object]) -> dict[str, object]:
    """The row after the declared steps, in order (a missing value is filled, never clipped)."""
    out = dict(row)
    for step in steps:
        value = out.get(step.field)
        if step.fill is not None and _missing(value):
            out[step.field] = step.fill
        elif step.clip is not None and not _missing(value) and isinstance(value, int | float | np.number):
            out[step.field] = min(max(float(value), step.clip[0]), step.clip[1])  # type: ignore[arg-type]
    return out


def postprocess(post: RoutinePost | None, values: np.ndarray) -> np.ndarray:
    """Clip, then round, the combined predictions."""
    if post is None:
        return values
    out = np.asarray(values, dtype=np.float64)
    if post.clip is not None:
        out = np.clip(out, post.clip[0], post.clip[1])
    if post.round is not None:
        out = np.round(out, post.round)
    return out


@dataclass(frozen=True)
class RoutineScores:
    """A group scored by the routine: the combined outputs, each component's outputs (None rows where it
    did not score), the rows each component scored, and each instance's breakdown of the combination."""

    combined: list[np.ndarray]
    outputs: dict[str, list[np.ndarray | None]]
    scored: dict[str, list[int]]
    breakdown: list[dict[str, object]]


def _score(model: ScoringModel, rows: Sequence[Mapping[str, object]], which: list[int]) -> dict[int, np.ndarray]:
    if not which:
        return {}
    outputs = model.predict_matrix(model.matrix([rows[i] for i in which]))
    return dict(zip(which, outputs, strict=True))


def score(spec: RoutineSpec, models: Mapping[str, ScoringModel], rows: Sequence[Mapping[str, object]]) -> RoutineScores:
    """Run the routine over pre-processed rows (one matrix per component)."""
    everyone = list(range(len(rows)))
    got: dict[str, dict[int, np.ndarray]] = {}
    breakdown: list[dict[str, object]] = []
    if spec.gate is None:
        weights = spec.weights or {c.name: 1 / len(spec.components) for c in spec.components}
        for name in weights:
            got[name] = _score(models[name], rows, everyone)
        raw = [sum(w * got[n][i] for n, w in weights.items()) for i in everyone]
        for i in everyone:
            breakdown.append({"combine": spec.combine, "terms": [
                {"component": n, "weight": w, "contribution": _number(w * got[n][i])} for n, w in weights.items()]})
    else:
        gate = spec.gate
        got[gate.component] = _score(models[gate.component], rows, everyone)
        passed = [i for i in everyone if float(got[gate.component][i]) > gate.above]
        through_rows = set(passed)
        failed = [i for i in everyone if i not in through_rows]
        got[gate.then] = {**got.get(gate.then, {}), **_score(models[gate.then], rows, passed)}
        if isinstance(gate.else_, str):
            got[gate.else_] = {**got.get(gate.else_, {}), **_score(models[gate.else_], rows, failed)}
        raw = []
        for i in everyone:
            through = i in through_rows
            branch = gate.then if through else gate.else_
            raw.append(got[branch][i] if isinstance(branch, str) else np.float64(branch))
            breakdown.append({"combine": "gate", "gate": gate.component, "gate_prediction": _number(got[gate.component][i]),
                              "above": gate.above, "passed": through,
                              "answered_by": branch if isinstance(branch, str) else "value"})
    before = np.asarray(raw, dtype=np.float64)
    after = postprocess(spec.post, before)
    if spec.post is not None:
        for i in everyone:
            breakdown[i]["post"] = {"before": float(before[i]), "after": float(after[i])}
    names = [c.name for c in spec.components]
    outputs = {n: [got.get(n, {}).get(i) for i in everyone] for n in names}
    scored = {n: sorted(got.get(n, {})) for n in names}
    return RoutineScores(list(after), outputs, scored, breakdown)


def _number(value: object) -> object:
    """A scalar output as a float; a multiclass output (one value per class) as a list."""
    array = np.asarray(value)
    return float(array) if array.ndim == 0 else [float(v) for v in array.ravel()]
