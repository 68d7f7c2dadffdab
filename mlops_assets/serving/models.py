"""The model slot and its hot swap: an immutable snapshot of the served arms, replaced atomically.

A request reads `slot.arms` once and uses that snapshot to the end, so a swap in the middle of a
request never mixes two models; the old snapshot is garbage-collected when its last request ends.
A background thread polls the registry aliases and swaps only after the new version fully loaded.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import mlflow.pyfunc
from mlflow import MlflowClient

from mlops_assets.features.views import FEATURE_VIEWS, FeatureView
from mlops_assets.registry.registry import CHALLENGER, CHAMPION, alias_version
from mlops_assets.serving.features import views_for
from mlops_assets.serving.metrics import Metrics
from mlops_assets.training.model import TabularModel

log = logging.getLogger(__name__)
ARM_ALIASES = {"champion": CHAMPION, "challenger": CHALLENGER}


@dataclass(frozen=True)
class LoadedModel:
    """One registry version, ready to score: the model and the feature views it reads."""

    name: str
    version: str
    model: TabularModel
    views: tuple[FeatureView, ...]
    loaded_at: datetime

    @classmethod
    def build(cls, name: str, version: str, model: TabularModel) -> LoadedModel:
        """Refuse what this service cannot answer for, before it is ever swapped in."""
        if model.problem != "binary":
            raise ValueError(f"{name} v{version} is a {model.problem} model; the service serves binary tasks")
        loaded = cls(name, str(version), model, tuple(views_for(model.features)), datetime.now(UTC))
        loaded.model.level_codes  # noqa: B018 - build the category index now, not on the first request
        return loaded


@dataclass(frozen=True)
class Arms:
    """What is served now: the champion, maybe a challenger, and the views either one reads."""

    champion: LoadedModel | None = None
    challenger: LoadedModel | None = None
    views: tuple[FeatureView, ...] = field(default=())

    def with_arm(self, arm: str, loaded: LoadedModel | None) -> Arms:
        chosen = dataclasses.replace(self, **{arm: loaded})
        used = {v.name for m in (chosen.champion, chosen.challenger) if m is not None for v in m.views}
        return dataclasses.replace(chosen, views=tuple(v for v in FEATURE_VIEWS.values() if v.name in used))

    def get(self, arm: str) -> LoadedModel | None:
        return self.champion if arm == "champion" else self.challenger


class ModelSlot:
    """Holds the current `Arms`; readers take the reference, the single writer replaces it."""

    def __init__(self) -> None:
        self.arms = Arms()
        self._lock = threading.Lock()

    def replace(self, arm: str, loaded: LoadedModel | None) -> None:
        with self._lock:
            self.arms = self.arms.with_arm(arm, loaded)


def load_version(client: MlflowClient, name: str, version: str) -> TabularModel:
    """The TabularModel of one registered version, loaded from its artifact location."""
    source = client.get_model_version_download_uri(name, version)
    return mlflow.pyfunc.load_model(source).unwrap_python_model().model


def settle_heap() -> None:
    """Take everything alive after a (re)load out of the cyclic collector's reach (gc.freeze): the
    ~650k objects of MLflow, pandas, FastAPI and the model otherwise make each full collection a
    pause of about 350 ms inside some request. Unfrozen first, so a swapped-out model is freed."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class RegistryWatcher:
    """Polls the aliases every `poll_seconds` and hot-swaps an arm when its alias moves."""

    def __init__(
        self,
        client: MlflowClient,
        model_name: str,
        slot: ModelSlot,
        metrics: Metrics,
        arms: tuple[str, ...],
        poll_seconds: float,
        also: Callable[[], None] | None = None,
    ) -> None:
        self.client, self.model_name, self.slot, self.metrics = client, model_name, slot, metrics
        self.arms, self.poll_seconds, self.also = arms, poll_seconds, also
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="registry-watcher", daemon=True)

    def refresh(self) -> None:
        """One poll: load and swap every arm whose alias points at another version than served."""
        swapped = False
        for arm in self.arms:
            version = alias_version(self.client, self.model_name, ARM_ALIASES[arm])
            current = self.slot.arms.get(arm)
            if version is None:
                self._alias_missing(arm, current)
            elif current is None or current.version != version:
                model = load_version(self.client, self.model_name, version)
                self.slot.replace(arm, LoadedModel.build(self.model_name, version, model))
                self.metrics.model_loaded(arm, self.model_name, version, swapped=current is not None)
                swapped = True
                log.info(
                    "serving %s v%s as %s (was %s)",
                    self.model_name,
                    version,
                    arm,
                    current.version if current else "nothing",
                )
        if swapped:
            settle_heap()

    def _alias_missing(self, arm: str, current: LoadedModel | None) -> None:
        """A vanished challenger ends the experiment; a vanished champion keeps serving the last one."""
        if current is None:
            return
        if arm == "champion":
            log.warning(
                "alias %s of %s is gone; still serving v%s", CHAMPION, self.model_name, current.version
            )
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
        """A failed poll (registry down, broken artifact) is logged and retried; serving goes on."""
        for step in (self.refresh, self.also):
            if step is None:
                continue
            try:
                step()
            except Exception:
                log.exception("registry poll for %s failed; keeping what is already loaded", self.model_name)
