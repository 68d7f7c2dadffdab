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
import importlib.metadata
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
from mlflow import MlflowClient

from mlops_assets.contract import ROLLOUT_SHARE_TAG
from mlops_assets.features.repository import view_feature_names
from mlops_assets.project.spec import Project, RoutineComponent
from mlops_assets.scoring_model import ScoringModel
from mlops_assets.serving.governance import alias_version, model_tags, ungoverned
from mlops_assets.serving.metrics import Metrics
from mlops_assets.serving.routine import LoadedRoutine, check_components

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
    """What is served now: the champion, maybe a challenger, and the views either one reads. With a
    routine, the champion is its first component (readiness) and the views are all components' views."""

    champion: LoadedModel | None = None
    challenger: LoadedModel | None = None
    views: tuple[str, ...] = field(default=())
    rollout_share: float | None = None  # the challenger's share while a rollout runs (registry tag)
    routine: LoadedRoutine | None = None

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

    def set_routine(self, routine: LoadedRoutine) -> None:
        """Swap the whole component set at once: a request sees the old set or the new one, never a mix."""
        used = {v for m in routine.components.values() for v in m.views}
        with self._lock:
            self.arms = dataclasses.replace(self.arms, routine=routine, champion=next(iter(routine.components.values())),
                                            views=tuple(v for v in self.view_order if v in used))

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
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    for mismatch in requirement_mismatches(local / "requirements.txt"):
        log.warning("%s: %s", uri, mismatch)
    python_model = mlflow.pyfunc.load_model(str(local), suppress_warnings=True).unwrap_python_model()
    model = ScoringModel.adopt(getattr(python_model, "model", python_model))
    unchecked = model.compile()
    if unchecked:
        log.warning("%s: scoring with LightGBM's predict, not the compiled trees: %s", uri, unchecked)
    warm = np.full((1, len(model.features)), np.nan)
    model.predict_matrix(warm)
    model.contributions_matrix(warm)
    return model


def requirement_mismatches(requirements: Path) -> list[str]:
    """The model's pinned requirements (`name==version`) this interpreter lacks or has at another version.
    MLflow's own check at load does the same by mapping every installed distribution (~2 s per load)."""
    found = []
    lines = requirements.read_text().splitlines() if requirements.exists() else []
    for name, _, pinned in (line.strip().partition("==") for line in lines):
        if not pinned or name.startswith(("#", "-")):
            continue
        try:
            here = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            here = None
        if here != pinned:
            found.append(f"trained with {name}=={pinned}, serving has {here or 'no ' + name}")
    return found


def load_version(client: MlflowClient, name: str, version: str) -> ScoringModel:
    """One registered version, loaded from its artifact location."""
    return load_scoring_model(client.get_model_version_download_uri(name, version))


def _pinned_ungoverned(client: MlflowClient, name: str, version: str) -> str | None:
    """Why a version pinned by the project file must not be served (None: it may): its blessing and
    infra validation must be recorded on it (the pin itself is reviewed with the project file)."""
    tags = client.get_model_version(name, version).tags
    if tags.get("blessed") != "true":
        return f"{name} v{version} has no recorded blessing ({tags.get('blessing_reasons') or 'no verdict'})"
    if tags.get("infra_valid") != "true":
        return f"{name} v{version} has not passed infra validation ({tags.get('infra_reasons') or 'not run'})"
    return None


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
        swapped, refused = self._refresh_routine() if self.project.routine is not None else (False, None)
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

    def _refresh_routine(self) -> tuple[bool, dict[str, str | None] | None]:
        """Resolve every component to a governed version and swap the set only when all of them are governed
        and loaded: one component that is not keeps the last governed set serving, with an alert."""
        spec = self.project.routine
        assert spec is not None
        current, wanted = self.slot.arms.routine, {}
        for component in spec.components:
            name, alias, version = self._resolve(component)
            if version is None:
                log.warning("routine %s: %s has no %s alias; serving %s", spec.name, name, alias,
                            current.label if current else "nothing")
                return False, None
            why = ungoverned(self.client, name, alias, version) if alias else _pinned_ungoverned(self.client, name,
                                                                                               version)
            if why is not None:
                return False, self._routine_refused(component.name, name, version, why, current)
            wanted[component.name] = (name, version)
        if current is not None and current.versions == wanted:
            return False, None
        loaded = {}
        for component, (name, version) in wanted.items():
            old = current.components.get(component) if current else None
            try:
                loaded[component] = old if old and (old.name, old.version) == (name, version) else \
                    LoadedModel.build(name, version, load_version(self.client, name, version), self.project)
            except ValueError as exc:
                return False, self._routine_refused(component, name, version, str(exc), current)
        try:
            check_components(spec, {c: m.model for c, m in loaded.items()})
        except ValueError as exc:
            return False, self._routine_refused(spec.components[0].name, *wanted[spec.components[0].name], str(exc),
                                                current)
        self.slot.set_routine(LoadedRoutine(spec, loaded))
        for component, model in loaded.items():
            self.metrics.model_loaded(f"routine:{component}", model.name, model.version, swapped=current is not None)
        log.info("serving routine %s as %s (was %s)", spec.name, self.slot.arms.routine.label,  # type: ignore[union-attr]
                 current.label if current else "nothing")
        return True, None

    def _resolve(self, component: RoutineComponent) -> tuple[str, str | None, str | None]:
        """(registered model, alias or None for a pinned version, version or None when the alias is missing)."""
        name = component.model or self.model_name
        if component.version is not None:
            return name, None, str(component.version)
        alias = component.alias or "champion"
        return name, alias, alias_version(self.client, name, alias)

    def _routine_refused(self, component: str, name: str, version: str, why: str,
                         current: LoadedRoutine | None) -> dict[str, str | None]:
        assert self.project.routine is not None
        refused: dict[str, str | None] = {"arm": "routine", "routine": self.project.routine.name,
                                          "component": component, "model": name, "version": version,
                                          "reason": why, "serving": current.label if current else None}
        self._refuse(refused)
        return refused

    def _refuse(self, refused: dict[str, str | None]) -> None:
        """Count, log and alert once per (arm, component, version) however many polls find the alias there."""
        key = (str(refused["arm"]), str(refused.get("component")), str(refused["version"]))
        if key in self._refused_seen:
            return
        self._refused_seen.add(key)
        self.metrics.version_refused(blocked=True)
        if "component" in refused:
            subject = (f"routine {refused['routine']} cannot serve component {refused['component']} "
                       f"({refused['model']} v{refused['version']})")
            still = f"still serving {refused['serving']}" if refused["serving"] else "serving nothing"
        else:
            subject = f"{refused['alias']} points at an ungoverned version"
            still = f"still serving v{refused['serving']}" if refused["serving"] else "serving nothing for it"
        log.error("refusing %s: %s; %s", subject, refused["reason"], still)
        if self.alert is not None:
            self.alert("ERROR", f"{subject}: {refused['reason']}; {still}", dict(refused))

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
