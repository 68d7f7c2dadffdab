"""The model slot and its hot swap: an immutable snapshot of the served arms, replaced atomically.

A request reads `slot.arms` once and uses that snapshot to the end, so a swap in the middle of a
request never mixes two models; the old snapshot is garbage-collected when its last request ends.
A background thread polls the registry aliases and swaps only after the new version fully loaded.
Registered models are MLflow pyfuncs whose python model has `.model` (a `ScoringModel` or an
object with the same attributes); nothing of the trainer is imported here.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import mlflow.pyfunc
import numpy as np
from mlflow import MlflowClient

from mlops_assets.contract import ROLLOUT_SHARE_TAG
from mlops_assets.features.repository import view_feature_names
from mlops_assets.project.spec import Project
from mlops_assets.scoring_model import ScoringModel
from mlops_assets.serving.governance import alias_version, model_tags, ungoverned
from mlops_assets.serving.metrics import Metrics

log = logging.getLogger(__name__)
ARM_ALIASES = {"champion": "champion", "challenger": "challenger"}


@dataclass(frozen=True)
class LoadedModel:
    """One registry version, ready to score: the model and the feature views it reads."""

    name: str
    version: str
    model: ScoringModel
    views: tuple[str, ...]
    loaded_at: datetime

    @classmethod
    def build(cls, name: str, version: str, model: object, project: Project) -> LoadedModel:
        """Refuse what this project cannot answer for (another problem, inputs from nowhere) before a swap."""
        scoring = ScoringModel.adopt(model)
        if scoring.problem != project.problem:
            raise ValueError(f"{name} v{version} is a {scoring.problem} model; the project is {project.problem}")
        provided = {v: set(view_feature_names(project, v)) for v in project.used_views}
        available = set(project.features).union(*provided.values())
        unknown = [f for f in scoring.features if f not in available]
        if unknown:
            raise ValueError(f"{name} v{version} reads features the project does not provide: {unknown[:10]}")
        views = tuple(v for v in project.used_views if provided[v] & set(scoring.features))
        return cls(name, str(version), scoring, views, datetime.now(UTC))


@dataclass(frozen=True)
class Arms:
    """What is served now: the champion, maybe a challenger, and the views either one reads."""

    champion: LoadedModel | None = None
    challenger: LoadedModel | None = None
    views: tuple[str, ...] = field(default=())
    rollout_share: float | None = None  # the challenger's share while a rollout runs (registry tag)

    def with_arm(self, arm: str, loaded: LoadedModel | None, order: Sequence[str]) -> Arms:
        chosen = dataclasses.replace(self, **{arm: loaded})
        used = {v for m in (chosen.champion, chosen.challenger) if m is not None for v in m.views}
        return dataclasses.replace(chosen, views=tuple(v for v in order if v in used))

    def get(self, arm: str) -> LoadedModel | None:
        return self.champion if arm == "champion" else self.challenger


class ModelSlot:
    """Holds the current `Arms`; readers take the reference, the single writer replaces it."""

    def __init__(self, view_order: Sequence[str] = ()) -> None:
        self.arms = Arms()
        self.view_order = tuple(view_order)
        self._lock = threading.Lock()

    def replace(self, arm: str, loaded: LoadedModel | None) -> None:
        with self._lock:
            self.arms = self.arms.with_arm(arm, loaded, self.view_order)

    def set_rollout_share(self, share: float | None) -> None:
        with self._lock:
            if share != self.arms.rollout_share:
                self.arms = dataclasses.replace(self.arms, rollout_share=share)


def rollout_share(client: MlflowClient, name: str) -> float | None:
    """The share a running rollout gives the challenger (the registered model's tag), else None; a registry
    error is raised (the poll keeps the share it had), not read as "no rollout"."""
    value = model_tags(client, name).get(ROLLOUT_SHARE_TAG, "")
    try:
        share = float(value)
    except ValueError:
        return None
    return share if 0 <= share <= 1 else None


def load_scoring_model(uri: str) -> ScoringModel:
    """The scoring model behind a pyfunc URI, warmed up (a first prediction and explanation) so the first
    request after a swap pays nothing extra. Infra validation's probe loads through this too."""
    python_model = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    model = ScoringModel.adopt(getattr(python_model, "model", python_model))
    warm = np.full((1, len(model.features)), np.nan)
    model.predict_matrix(warm)
    model.contributions_matrix(warm)
    return model


def load_version(client: MlflowClient, name: str, version: str) -> ScoringModel:
    """One registered version, loaded from its artifact location."""
    return load_scoring_model(client.get_model_version_download_uri(name, version))


def settle_heap(full: bool = False) -> None:
    """Take everything alive after a load out of the cyclic collector's reach (gc.freeze): the ~650k
    objects of MLflow, pandas, FastAPI and the model otherwise make each full collection a pause of
    about 300 ms inside some request. The first load (before the service is ready) collects fully
    first. A hot swap does not: a full collection holds the GIL that long, stalling every request;
    it collects the young generations (the load's own garbage) and freezes the rest. A swapped-out
    model is freed by reference counting, which freezing does not stop (LightGBM boosters hold no
    cycles); what a load leaves in cycles among old objects (a few hundred objects) stays."""
    if full:
        gc.unfreeze()
        gc.collect()
    else:
        gc.collect(1)
    gc.freeze()


class RegistryWatcher:
    """Polls the aliases every `poll_seconds` and hot-swaps an arm when its alias moves to a governed
    version; an alias moved to an ungoverned one leaves the arm on what it serves, with an alert."""

    def __init__(self, client: MlflowClient, project: Project, slot: ModelSlot, metrics: Metrics,
                 arms: tuple[str, ...], poll_seconds: float, also: Callable[[], object] | None = None,
                 alert: Callable[[str, str, dict[str, object]], None] | None = None) -> None:
        self.client, self.project, self.model_name = client, project, project.model_name
        self.slot, self.metrics, self.alert = slot, metrics, alert
        self.arms, self.poll_seconds, self.also = arms, poll_seconds, also
        self.refused: dict[str, str | None] | None = None
        self._settled = False
        self._refused_seen: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="registry-watcher", daemon=True)

    def refresh(self) -> None:
        """One poll: load and swap every arm whose alias points at another governed version than served."""
        swapped, refused = False, None
        for arm in self.arms:
            alias = ARM_ALIASES[arm]
            version = alias_version(self.client, self.model_name, alias)
            current = self.slot.arms.get(arm)
            if version is None:
                self._alias_missing(arm, current)
                continue
            if current is not None and current.version == version:
                continue
            why = ungoverned(self.client, self.model_name, alias, version)
            if why is not None:
                refused = {"arm": arm, "alias": alias, "version": version, "reason": why,
                           "serving": current.version if current else None}
                self._refuse(refused)
                continue
            model = load_version(self.client, self.model_name, version)
            self.slot.replace(arm, LoadedModel.build(self.model_name, version, model, self.project))
            self.metrics.model_loaded(arm, self.model_name, version, swapped=current is not None)
            swapped = True
            log.info("serving %s v%s as %s (was %s)", self.model_name, version, arm,
                     current.version if current else "nothing")
        self.refused = refused
        self.slot.set_rollout_share(rollout_share(self.client, self.model_name))
        if refused is None:
            self.metrics.governance_cleared()
        if swapped:
            settle_heap(full=not self._settled)
            self._settled = True

    def _refuse(self, refused: dict[str, str | None]) -> None:
        """Count, log and alert once per (arm, version) however many polls find the alias there."""
        key = (str(refused["arm"]), str(refused["version"]))
        if key in self._refused_seen:
            return
        self._refused_seen.add(key)
        self.metrics.version_refused(blocked=True)
        still = f"still serving v{refused['serving']}" if refused["serving"] else "serving nothing for it"
        log.error("refusing %s: %s; %s", refused["alias"], refused["reason"], still)
        if self.alert is not None:
            self.alert("ERROR", f"{refused['alias']} points at an ungoverned version: {refused['reason']}; {still}",
                       dict(refused))

    def _alias_missing(self, arm: str, current: LoadedModel | None) -> None:
        """A vanished challenger ends the experiment; a vanished champion keeps serving the last one."""
        if current is None:
            return
        if arm == "champion":
            log.warning("alias %s of %s is gone; still serving v%s", ARM_ALIASES[arm], self.model_name,
                        current.version)
            return
        self.slot.replace(arm, None)
        self.metrics.model_dropped(arm)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.safe_refresh()

    def safe_refresh(self) -> None:
        """A failed poll (registry or store down, broken artifact) is logged and retried; serving goes on."""
        for step in (self.refresh, self.also):
            if step is None:
                continue
            try:
                step()
            except Exception:
                log.exception("poll for %s failed; keeping what is already loaded", self.model_name)
