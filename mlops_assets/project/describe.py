"""What a project declares, as text for `mlops-assets check` (sources, views, features, label, request)."""

from __future__ import annotations

from mlops_assets.features.repository import model_features, view_feature_names
from mlops_assets.project.loading import LoadedProject, source_columns
from mlops_assets.project.spec import duration_label


def describe(project: LoadedProject) -> str:
    spec = project.spec
    lines = [f"project {spec.name}: {spec.description.strip()}", f"file: {project.path}",
             f"problem: {spec.problem}, model {spec.model_name}, primary metric {spec.primary_metric}",
             f"periods: {spec.granularity}s from {spec.start}, open-ended", "sources:"]
    for name, source in spec.sources.items():
        where = project.source_path(name) or "landing folder only"
        timing = f"{source.kind}, time {source.time} ({source.time_zone})" if source.time else source.kind
        lines.append(f"  {name}: {timing}; {len(source.schema_)} declared columns, "
                     f"{len(source_columns(source)) - len(source.schema_)} computed/derived; from {where}")
    lines.append("feature views:")
    for name, view in spec.feature_views.items():
        known = f"known at {view.known_at}" if view.known_at else "static"
        lines.append(f"  {name} ({view.source} by {', '.join(spec.entities[view.entity])}; {known}): "
                     f"{', '.join(view_feature_names(spec, name))}")
    label = spec.label
    rule = (f"column {label.column}" if label.column else f"{label.threshold.column} > {label.threshold.above}"
            if label.threshold else f"{label.future.column} {duration_label(label.future.offset)} later")
    lines += [f"label: {label.name} = {rule}",
              f"prediction time: {spec.prediction_time.column} - {duration_label(spec.prediction_time.lead)}",
              f"model features ({len(model_features(spec))}): {', '.join(model_features(spec))}", "request schema:"]
    for name, field in spec.request.fields.items():
        extra = [f"one of {field.domain}" if field.domain else "", "optional" if not field.required else "",
                 f"zone {field.time_zone}" if field.time_zone else ""]
        lines.append(f"  {name}: {field.type} {' '.join(e for e in extra if e)}".rstrip())
    split = spec.split
    lines.append(f"split: by {split.granularity}, test {split.test}, validation {split.validation}, gap {split.gap}, "
                 f"at least {split.min_rows} rows each")
    return "\n".join(lines)
