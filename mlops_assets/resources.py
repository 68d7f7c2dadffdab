"""Dagster resources: the only owners of I/O (lake files, online store)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from mlops_assets.features.online_store import OnlineStore
from mlops_assets.lake import Lake
from mlops_assets.project.loading import LoadedProject, load_project
from mlops_assets.settings import DATA_DIR, project_path, state_dir


class LakeResource(dg.ConfigurableResource):
    """Embedded sample data, landing folder, validated batches, quarantine and offline store."""

    state_dir: str = str(state_dir())
    data_dir: str = str(DATA_DIR)

    def get(self) -> Lake:
        return Lake(root=Path(self.state_dir), data_dir=Path(self.data_dir))


class OnlineStoreResource(dg.ConfigurableResource):
    """The embedded online store (SQLite file) serving the latest feature values per key."""

    path: str = str(state_dir() / "online_store.db")

    def get(self) -> OnlineStore:
        return OnlineStore(Path(self.path))


class ProjectResource(dg.ConfigurableResource):
    """The project file (sources, feature views, label, request, gate) every stage reads."""

    path: str = str(project_path())

    def get(self) -> LoadedProject:
        return load_project(Path(self.path))
