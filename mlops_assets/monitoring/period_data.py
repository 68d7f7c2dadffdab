"""A period's inputs from the lake: prepared sources around it and its labelled examples.

Monitoring periods are cut on the request time in UTC, deliveries on the source's own calendar,
and a future label needs the next delivery: so a period reads its own delivery and the
neighbouring ones, then keeps the examples whose request time is in the period.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from mlops_assets.features.sources import prepare_all
from mlops_assets.lake import Lake
from mlops_assets.monitoring.serving_frame import in_period, typed_requests
from mlops_assets.project.loading import LoadedProject
from mlops_assets.project.spec import Project
from mlops_assets.training.training_set import examples_frame


def neighbours(available: list[str], label: str, before: int = 1, after: int = 1) -> list[str]:
    """The delivered periods around `label` (itself included when delivered), in order."""
    earlier = [p for p in available if p < label][-before:] if before else []
    later = [p for p in available if p > label][:after] if after else []
    return [*earlier, *([label] if label in available else []), *later]


def needed_sources(project: Project, sources: list[str]) -> list[str]:
    """The sources and the reference tables their derive functions read."""
    derives = [project.sources[s].derive for s in sources]
    extra = [i for d in derives if d is not None for i in d.inputs]
    return list(dict.fromkeys([*sources, *extra]))


def read_prepared(store: Lake, project: LoadedProject, sources: list[str],
                  periods: dict[str, list[str]] | None = None) -> dict[str, pl.DataFrame]:
    """Validated batches of the sources (the given periods, or all), references whole, prepared."""
    spec = project.spec
    raw = {}
    for name in needed_sources(spec, sources):
        if spec.sources[name].kind == "reference":
            raw[name] = store.read_reference(name)
        else:
            raw[name] = store.read_batches(name, None if periods is None else periods.get(name))
    return prepare_all(project, raw)


def period_examples(store: Lake, project: LoadedProject, label: str, start: datetime, end: datetime,
                    labelled: bool = True) -> pl.DataFrame:
    """The examples whose request time is in [start, end), request fields typed; `labelled=False` keeps
    those without a label too (what is scored and served; labels arrive later, or never)."""
    source = project.spec.examples.source
    periods = {source: neighbours(store.available_periods(source), label)}
    if label not in periods[source]:
        raise FileNotFoundError(f"no validated {source} batch for {label}: ingest the period first")
    examples = examples_frame(project, read_prepared(store, project, [source], periods), labelled=labelled)
    return in_period(typed_requests(examples, project.spec), project.spec, start, end)
