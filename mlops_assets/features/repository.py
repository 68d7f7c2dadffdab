"""The feature repository of a project: view feature names, view event frames, offline features.

A view's plain `features` are `last` values over its TTL window and its `aggregations` are
windowed aggregates, all computed over the events known in (t - window, t] by the same engine
(`windows`) offline and online, so served values equal training values by construction.
"""

from __future__ import annotations

from datetime import timedelta

from mlops_assets.project.spec import FeatureViewSpec, Project, duration_label

# A plain feature of a view without TTL: the latest value ever known (a century is "ever").
FOREVER = timedelta(days=36525)


def aggregation_name(view_name: str, view: FeatureViewSpec, index: int, window: timedelta) -> str:
    """<prefix>_<column>_<function>_<window> unless the declaration names it ({prefix}, {window})."""
    agg = view.aggregations[index]
    prefix = view.prefix or view_name
    label = duration_label(window)
    if agg.name:
        return agg.name.format(prefix=prefix, window=label)
    return f"{prefix}_{agg.column or 'events'}_{agg.function}_{label}"


def view_feature_names(project: Project, view_name: str) -> list[str]:
    """Every feature a view provides, in a stable order: plain columns, then each aggregation per window."""
    view = project.feature_views[view_name]
    names = list(view.features)
    for i, agg in enumerate(view.aggregations):
        names += [aggregation_name(view_name, view, i, w) for w in agg.windows]
    return names


def model_features(project: Project) -> list[str]:
    """The model's inputs: the project's direct features, then every used view's features."""
    return [*project.features, *(f for v in project.used_views for f in view_feature_names(project, v))]


def view_keys(project: Project, view_name: str) -> list[str]:
    return list(project.entities[project.feature_views[view_name].entity])
