"""Read a project file, check that its parts fit together, and load its code module.

Every problem becomes a `ProjectError` naming the file, the field and what is allowed, so
every entry point can print one line instead of a traceback.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import yaml
from pydantic import ValidationError

from mlops_assets.project.spec import BinSlice, Project, SourceSpec


class ProjectError(ValueError):
    """A project file that cannot be used: where, and what is wrong."""

    def __init__(self, path: Path, where: str, problem: str) -> None:
        self.path, self.where, self.problem = path, where, problem
        super().__init__(f"{path}: {where}: {problem}" if where else f"{path}: {problem}")


@dataclass(frozen=True)
class LoadedProject:
    """The parsed project, its folder (paths resolve against it) and its named functions."""

    spec: Project
    path: Path
    functions: dict[str, Callable] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent

    def source_path(self, source: str) -> Path | None:
        relative = self.spec.sources[source].path
        return None if relative is None else (self.root / relative).resolve()

    def function(self, name: str) -> Callable:
        return self.functions[name]


def _pydantic_error(path: Path, exc: ValidationError) -> ProjectError:
    """The first error, with its dotted location, the input (bounded) and what is allowed."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")  # a typo explains the rest
    err = errors[0]
    where = ".".join(str(p) for p in err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown field; see the README's project file reference for the allowed fields"
    elif err["type"] == "literal_error":
        message = f"{str(err.get('input'))[:40]!r} is not allowed; {message.lower()}"
    extra = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return ProjectError(path, where, message + extra)


def source_columns(source: SourceSpec) -> dict[str, str]:
    """Declared columns and the ones its derive function adds, with their types."""
    return {**{n: c.type for n, c in source.schema_.items()}, **{n: c.type for n, c in source.computed.items()},
            **(source.derive.adds if source.derive else {})}


def _check_views(path: Path, project: Project) -> None:
    for name, view in project.feature_views.items():
        where = f"feature_views.{name}"
        if view.source not in project.sources:
            raise ProjectError(path, f"{where}.source", f"unknown source {view.source!r}; declared: {sorted(project.sources)}")
        if view.entity not in project.entities:
            raise ProjectError(path, f"{where}.entity", f"unknown entity {view.entity!r}; declared: {sorted(project.entities)}")
        columns = source_columns(project.sources[view.source])
        for key in project.entities[view.entity]:
            if key not in columns:
                raise ProjectError(path, f"{where}.entity", f"join key {key!r} is not a column of source {view.source!r}")
        wanted = [("features", c) for c in view.features] + [("known_at", view.known_at)] * bool(view.known_at)
        wanted += [(f"aggregations[{i}].column", a.column) for i, a in enumerate(view.aggregations) if a.column]
        for field_name, column in wanted:
            if column not in columns:
                raise ProjectError(path, f"{where}.{field_name}",
                                   f"no source provides {column!r}: source {view.source!r} has {sorted(columns)}")
        if view.aggregations and not view.known_at:
            raise ProjectError(path, f"{where}.known_at", "aggregations need `known_at`: when each event became known")
        if view.known_at and columns[view.known_at] not in {"datetime", "date"}:
            raise ProjectError(path, f"{where}.known_at", f"{view.known_at!r} must be a datetime column")


def _check_examples(path: Path, project: Project) -> None:
    if project.examples.source not in project.sources:
        raise ProjectError(path, "examples.source", f"unknown source {project.examples.source!r}; "
                                                    f"declared: {sorted(project.sources)}")
    columns = source_columns(project.sources[project.examples.source])
    label = project.label
    label_column = label.column or (label.threshold.column if label.threshold else label.future.column)
    if label_column not in columns:
        raise ProjectError(path, "label", f"label column {label_column!r} is missing from source "
                                          f"{project.examples.source!r}; it has {sorted(columns)}")
    if label.threshold and project.problem != "binary":
        raise ProjectError(path, "label.threshold", "a threshold label makes a binary problem; set problem: binary")
    needed = [("prediction_time.column", project.prediction_time.column), *(("examples.id", c) for c in project.examples.id),
              *(("features", c) for c in project.features)]
    for where, column in needed:
        if column not in columns and column not in project.request.calendar:
            raise ProjectError(path, where, f"no source provides {column!r}: examples come from "
                                            f"{project.examples.source!r}, which has {sorted(columns)}")
    view_keys = {k for v in project.used_views for k in project.entities[project.feature_views[v].entity]}
    for key in sorted(view_keys):
        if key not in columns:
            raise ProjectError(path, "examples.source", f"the examples lack the join key {key!r} of a feature view")


def _check_request(path: Path, project: Project) -> None:
    request = project.request
    if request.time not in request.fields or request.fields[request.time].type not in {"datetime", "date"}:
        raise ProjectError(path, "request.time", f"{request.time!r} must be a datetime or date field of request.fields")
    view_keys = {k for v in project.used_views for k in project.entities[project.feature_views[v].entity]}
    direct = [c for c in project.features if c not in request.calendar]
    for key in sorted(view_keys | set(direct)):
        if key not in request.fields:
            raise ProjectError(path, "request.fields", f"{key!r} is a model input or view key but the request lacks it")
    for column in project.examples.id:
        if column not in request.fields:
            raise ProjectError(path, "examples.id", f"{column!r} must also be a request field: labels are joined "
                                                    "to served predictions by the example id")
    for name, feature in request.calendar.items():
        if feature.of not in request.fields:
            raise ProjectError(path, f"request.calendar.{name}.of", f"{feature.of!r} is not a request field")


def _check_model(path: Path, project: Project) -> None:
    for name in project.used_views:
        if name not in project.feature_views:
            raise ProjectError(path, "views", f"unknown feature view {name!r}; declared: {sorted(project.feature_views)}")
    unknown = sorted(set(project.categorical) - set(project.features))
    if unknown:
        raise ProjectError(path, "categorical", f"not listed in features: {unknown}")
    for i, item in enumerate(project.slices):
        column = item.column if isinstance(item, BinSlice) else item
        if column not in set(project.features) | {"period"}:
            raise ProjectError(path, f"slices[{i}]", f"{column!r} is not a feature (slices use model features or 'period')")
    if project.problem == "multiclass" and project.classes is not None and len(project.classes) < 3:
        raise ProjectError(path, "classes", "multiclass needs at least 3 classes; use problem: binary for 2")


def _load_code(path: Path, project: Project) -> dict[str, Callable]:
    """Import the project's module by path under a private name: the core never imports it by name."""
    if project.code is None:
        return {}
    file = (path.parent / project.code).resolve()
    if not file.exists():
        raise ProjectError(path, "code", f"{file} does not exist")
    module_name = f"mlops_project_{project.name}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return {n: getattr(module, n) for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")}


def _check_functions(path: Path, project: Project, functions: dict[str, Callable]) -> None:
    for name, source in project.sources.items():
        if source.derive and source.derive.function not in functions:
            raise ProjectError(path, f"sources.{name}.derive.function",
                               f"{source.derive.function!r} is not a function of {project.code or 'the project (no `code`)'}")
        for ref in source.derive.inputs if source.derive else []:
            if ref not in project.sources:
                raise ProjectError(path, f"sources.{name}.derive.inputs", f"unknown source {ref!r}")


def load_project(path: Path | str) -> LoadedProject:
    """Parse, validate and cross-check a project file; any problem is one ProjectError."""
    path = Path(path).resolve()
    if path.is_dir():
        path = path / "project.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ProjectError(path, "", "project file not found (set MLOPS_PROJECT to a project folder or file)") from None
    except yaml.YAMLError as exc:
        raise ProjectError(path, "", f"not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ProjectError(path, "", "a project file is a mapping of fields (name, sources, feature_views, ...)")
    try:
        project = Project.model_validate(raw)
    except ValidationError as exc:
        raise _pydantic_error(path, exc) from None
    for check in (_check_views, _check_examples, _check_request, _check_model):
        check(path, project)
    functions = _load_code(path, project)
    _check_functions(path, project, functions)
    return LoadedProject(project, path, functions)
