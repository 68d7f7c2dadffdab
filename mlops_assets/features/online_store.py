"""The online store: latest feature values per entity key in SQLite, read in microseconds.

One table per feature view, keyed by the joined entity key; values are a JSON object and the
event time is kept so every read reports how fresh each value is.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from mlops_assets.features.views import FeatureView

KEY_SEPARATOR = "|"


@dataclass(frozen=True)
class FeatureValue:
    """One view's features for one key, and when they became known (None when absent)."""

    values: dict[str, object] | None
    event_time: datetime | None

    def age_seconds(self, as_of: datetime) -> float | None:
        return None if self.event_time is None else (as_of - self.event_time).total_seconds()


def latest_per_key(view: FeatureView, data: pl.DataFrame) -> pl.DataFrame:
    """The newest row per entity key: what the online store serves."""
    return (
        data.sort(view.timestamp_field)
        .unique(subset=list(view.entity_keys), keep="last")
        .filter(pl.all_horizontal(pl.col(k).is_not_null() for k in view.entity_keys))
    )


def entity_key(values: tuple[object, ...]) -> str:
    return KEY_SEPARATOR.join(str(v) for v in values)


class OnlineStore:
    """SQLite-backed store; one connection per thread, writes replace a view atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def write_view(self, view: FeatureView, data: pl.DataFrame) -> int:
        """Replace the view's table with the latest value per key, in one transaction."""
        latest = latest_per_key(view, data)
        ts_us = latest[view.timestamp_field].dt.epoch("us").to_list()
        keys = latest.select(view.entity_keys).rows()
        payloads = latest.select(view.features).to_dicts()
        rows = [
            (entity_key(k), t, json.dumps(p, default=str)) for k, t, p in zip(keys, ts_us, payloads, strict=False)
        ]
        conn = self._conn()
        with conn:
            conn.execute(f'DROP TABLE IF EXISTS "{view.name}"')
            conn.execute(
                f'CREATE TABLE "{view.name}" (key TEXT PRIMARY KEY, event_us INTEGER, value TEXT)'
            )
            conn.executemany(f'INSERT INTO "{view.name}" VALUES (?, ?, ?)', rows)
        return len(rows)

    def read(self, view: FeatureView, key: tuple[object, ...]) -> FeatureValue:
        """Latest features of one entity; absent keys give an empty value, never an error."""
        row = self._conn().execute(
            f'SELECT event_us, value FROM "{view.name}" WHERE key = ?', (entity_key(key),)
        ).fetchone()
        if row is None:
            return FeatureValue(None, None)
        event_time = datetime.fromtimestamp(row[0] / 1e6, tz=UTC)
        return FeatureValue(json.loads(row[1]), event_time)

    def read_keys(self, view: FeatureView, keys: list[tuple[object, ...]]) -> dict[tuple[object, ...], FeatureValue]:
        """Many keys of one view in one query (a batch request); absent keys are simply not returned."""
        wanted = {entity_key(k): k for k in keys}
        found: dict[tuple[object, ...], FeatureValue] = {}
        names = list(wanted)
        for start in range(0, len(names), 500):
            chunk = names[start:start + 500]
            rows = self._conn().execute(
                f'SELECT key, event_us, value FROM "{view.name}" WHERE key IN ({",".join("?" * len(chunk))})', chunk
            ).fetchall()
            for key, event_us, value in rows:
                found[wanted[key]] = FeatureValue(json.loads(value), datetime.fromtimestamp(event_us / 1e6, tz=UTC))
        return found

    def read_many(
        self, views: list[FeatureView], request: dict[str, object]
    ) -> dict[str, FeatureValue]:
        """The feature vector of one request: each view looked up by its keys in the request."""
        return {v.name: self.read(v, tuple(request[k] for k in v.entity_keys)) for v in views}

    def count(self, view: FeatureView) -> int:
        return self._conn().execute(f'SELECT COUNT(*) FROM "{view.name}"').fetchone()[0]
