"""Request-time features: the booking's own features and the online-store lookup with freshness.

`request_feature_values` is the per-row twin of `transforms.request_features` (same time zone,
same weekday numbering, same casts); a test checks them equal on real flights.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl

from mlops_assets.features.online_store import KEY_SEPARATOR, FeatureValue, OnlineStore
from mlops_assets.features.transforms import LOCAL_TZ
from mlops_assets.features.views import FEATURE_VIEWS, FeatureView, route_delay_view
from mlops_assets.settings import DATA_DIR

LOCAL = ZoneInfo(LOCAL_TZ)
REQUEST_FEATURES = ("sched_hour", "day_of_week", "distance", "carrier", "origin", "dest")
SERVED_ORIGINS = frozenset({"EWR", "JFK", "LGA"})


def as_aware(moment: datetime) -> datetime:
    """A naive time is New York local time (the airports' clock); aware times keep their zone."""
    return moment.replace(tzinfo=LOCAL) if moment.tzinfo is None else moment


def request_feature_values(scheduled_departure: datetime, distance: float) -> dict[str, object]:
    """sched_hour (local NY hour), day_of_week (ISO 1..7, polars `weekday`), distance as float."""
    local = as_aware(scheduled_departure).astimezone(LOCAL)
    return {"sched_hour": local.hour, "day_of_week": local.isoweekday(), "distance": float(distance)}


@dataclass(frozen=True)
class Lookup:
    """One request's view values: features by name, age per view, and the views with no value."""

    features: dict[str, object]
    freshness: dict[str, float | None]
    missing: list[str]


def views_for(features: list[str]) -> list[FeatureView]:
    """The feature views a model reads, in registry order; a feature from nowhere is an error."""
    owners = {f: v for v in FEATURE_VIEWS.values() for f in v.features}
    unknown = [f for f in features if f not in owners and f not in REQUEST_FEATURES]
    if unknown:
        raise ValueError(f"model features neither in the request nor in a feature view: {unknown}")
    used = {owners[f].name for f in features if f in owners}
    return [v for v in FEATURE_VIEWS.values() if v.name in used]


class FeatureLookup:
    """Reads the online store (one SQLite connection per thread, handled by OnlineStore)."""

    def __init__(self, path: Path, enforce_ttl: bool = False) -> None:
        self.store = OnlineStore(path)
        self.enforce_ttl = enforce_ttl

    def _read(self, view: FeatureView, keys: dict[str, object]) -> FeatureValue:
        key = tuple(keys.get(k) for k in view.entity_keys)
        if any(part is None for part in key):
            return FeatureValue(None, None)
        try:
            return self.store.read(view, key)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return FeatureValue(None, None)
            raise

    def prefetch(self, views: list[FeatureView], requests: list[dict[str, object]]) -> dict:
        """One query per view for a whole batch, instead of one per view and row."""
        cache: dict[tuple[str, tuple[object, ...]], FeatureValue] = {}
        for view in views:
            keys = {tuple(r.get(k) for k in view.entity_keys) for r in requests}
            keys = [k for k in keys if all(part is not None for part in k)]
            try:
                values = self.store.read_keys(view, keys)
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                values = {}
            cache.update({(view.name, k): values.get(k, FeatureValue(None, None)) for k in keys})
        return cache

    def lookup(self, views: list[FeatureView], keys: dict[str, object], as_of: datetime,
               cache: dict | None = None) -> Lookup:
        """Latest value per view; with `enforce_ttl`, a value older than the view's TTL counts as missing."""
        features: dict[str, object] = {}
        freshness: dict[str, float | None] = {}
        missing: list[str] = []
        for view in views:
            key = tuple(keys.get(k) for k in view.entity_keys)
            cached = None if cache is None else cache.get((view.name, key))
            found = cached if cached is not None else self._read(view, keys)
            age = found.age_seconds(as_of)
            if found.values is None or (
                self.enforce_ttl
                and view.ttl is not None
                and age is not None
                and age > view.ttl.total_seconds()
            ):
                missing.append(view.name)
            else:
                features.update(found.values)
            freshness[view.name] = age
        return Lookup(features, freshness, missing)


def prediction_time(scheduled_departure: datetime, lead_hours: float) -> datetime:
    """The project's prediction time: scheduled departure minus the task's lead, in UTC."""
    return as_aware(scheduled_departure).astimezone(UTC) - timedelta(hours=lead_hours)


def known_destinations(online_store: Path, data_dir: Path = DATA_DIR) -> frozenset[str]:
    """FAA codes of the airports table plus every destination with a route in the online store."""
    codes = set(pl.read_parquet(data_dir / "airports.parquet", columns=["faa"])["faa"].to_list())
    if online_store.exists():
        conn = sqlite3.connect(f"file:{online_store}?mode=ro", uri=True)
        try:
            table = conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name=?", (route_delay_view.name,)
            ).fetchone()
            if table is not None:
                rows = conn.execute(f'SELECT key FROM "{route_delay_view.name}"').fetchall()
                codes.update(key.split(KEY_SEPARATOR)[-1] for (key,) in rows)
        finally:
            conn.close()
    return frozenset(c for c in codes if isinstance(c, str) and len(c) == 3 and c.isalnum() and c.isupper())
