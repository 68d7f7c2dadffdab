"""The project file: both examples load; every bad declaration is one line naming file and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlops_assets.features.repository import model_features
from mlops_assets.project.loading import ProjectError, load_project
from mlops_assets.settings import PROJECT_ROOT, PROJECTS_DIR
from mlops_assets_tests.projects import project_copy


@pytest.mark.parametrize("name", ["flights", "weather"])
def test_example_projects_load_and_declare_their_features(name: str) -> None:
    project = load_project(PROJECTS_DIR / name)
    features = model_features(project.spec)
    assert len(features) == len(set(features)) > 10
    assert set(project.spec.request.fields) >= set(project.spec.examples.id)


def _broken(tmp_path: Path, edit) -> Path:
    target = project_copy("flights", tmp_path / "project.yaml")
    raw = yaml.safe_load(target.read_text())
    edit(raw)
    target.write_text(yaml.safe_dump(raw, sort_keys=False))
    return target


def _set(path: str, value: object):
    def edit(raw: dict) -> None:
        *parents, leaf = path.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[leaf] = value
    return edit


CASES = {
    "unknown field": (_set("gate.tolerence", 0.1), "gate.tolerence", "unknown field"),
    "unknown type": (_set("sources.weather.schema.temp.type", "decimal"), "sources.weather.schema.temp.type",
                     "'decimal' is not allowed"),
    "feature no source provides": (_set("feature_views.weather_features.features", ["temp", "fog_index"]),
                                   "feature_views.weather_features.features", "no source provides 'fog_index'"),
    "label column missing": (_set("label.threshold.column", "arrival_delay"), "label",
                             "label column 'arrival_delay' is missing"),
    "request missing a declared key": (lambda raw: raw["request"]["fields"].pop("dest"), "request.fields",
                                       "'dest' is a model input or view key but the request lacks it"),
    "bad duration": (_set("feature_views.weather_features.ttl", "3 hours"), "feature_views.weather_features.ttl",
                     "not a duration"),
    "unknown view source": (_set("feature_views.weather_features.source", "metar"),
                            "feature_views.weather_features.source", "unknown source 'metar'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_project_file_is_one_clear_error(tmp_path: Path, case: str) -> None:
    edit, where, message = CASES[case]
    with pytest.raises(ProjectError) as info:
        load_project(_broken(tmp_path, edit))
    text = str(info.value)
    assert "\n" not in text and where in text and message in text and "project.yaml" in text


def test_check_command_prints_the_declarations_and_fails_with_one_line(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "mlops_assets.cli", "check", str(PROJECTS_DIR / "weather")],
                        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "request schema:" in ok.stdout and "location: str one of" in ok.stdout
    bad = _broken(tmp_path, _set("problem", "ranking"))
    failed = subprocess.run([sys.executable, "-m", "mlops_assets.cli", "check", str(bad)],
                            capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert failed.returncode == 2
    assert failed.stderr.count("\n") == 1 and "problem" in failed.stderr and "Traceback" not in failed.stderr
