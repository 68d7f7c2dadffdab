"""Dagster resources: the only owners of I/O (lake files, online store)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from mlops_assets.features.online_store import OnlineStore
from mlops_assets.lake import Lake
from mlops_assets.project.loading import LoadedProject, load_project
from mlops_assets.registry.infra import ProbeProcess
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


class InfraProbeResource(dg.ConfigurableResource):
    """Fresh interpreters for infra validation. One starts when the resource is set up: for a run of the
    in-process executor that is before its first step, so the probe's imports (most of a check's time)
    overlap training; a step-per-process executor sets it up with the check's own step."""

    _warm: ProbeProcess | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._warm = ProbeProcess()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._warm is not None:
            self._warm.close()

    def take(self) -> ProbeProcess:
        """The warm probe the first time, a new one after (each probe loads one model)."""
        warm, self._warm = self._warm, None
        return warm or ProbeProcess()
