"""Copies of the example project files for tests: absolute paths, small tuning, overrides."""

from __future__ import annotations

from pathlib import Path

import yaml

from mlops_assets.settings import PROJECTS_DIR

SMALL_TUNING = {"n_trials": 1, "timeout_seconds": 60, "max_rounds": 60, "early_stopping_rounds": 10}


def project_copy(name: str, target: Path, **overrides: object) -> Path:
    """The example project's file with absolute paths (so it works from a temp folder), small tuning
    and overrides (dotted keys nest)."""
    folder = PROJECTS_DIR / name
    project = yaml.safe_load((folder / "project.yaml").read_text())
    for source in project["sources"].values():
        if source.get("path"):
            source["path"] = str((folder / source["path"]).resolve())
    if project.get("code"):
        project["code"] = str((folder / project["code"]).resolve())
    project["tuning"] = dict(SMALL_TUNING)
    for key, value in overrides.items():
        node = project
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    target.write_text(yaml.safe_dump(project, sort_keys=False))
    return target
