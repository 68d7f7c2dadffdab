"""Request-time view features: each view's events in memory, exact windows at the prediction time.

At start every used view's events are loaded from the online store into an `OnlineWindows` (a
static view into a dict by key). Before each request (or batch) the events pushed since the last
one are applied (one indexed `SELECT ... WHERE seq > ?`), so a push through any worker is seen by
the next request in every worker. A request at time t gets exactly what training computed for t;
a time before the history held (backdated) leaves the view missing rather than wrong. When the
`online_store` asset rewrites the file (its generation moves), a new snapshot is loaded off the
request path and swapped in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat

import numpy as np
import polars as pl

from mlops_assets.features.online_store import EVENT_ID, OnlineStore
from mlops_assets.features.repository import is_static, view_aggregations, view_feature_names, view_keys
from mlops_assets.features.windows import NO_EVENT, OnlineWindows, ViewsRead, ViewsReader, epoch_us
from mlops_assets.project.spec import Project

log = logging.getLogger(__name__)
QUERY_SECONDS = 1.0


class ViewState:
    """One view in memory: its windows (or static rows by key) and the names it provides."""

    def __init__(self, project: Project, name: str, frame: pl.DataFrame | None, horizon: datetime | None) -> None:
        self.name, self.keys = name, tuple(view_keys(project, name))
        self.names = view_feature_names(project, name)
        self.static = is_static(project, name)
        self.loaded = frame is not None
        self.windows: OnlineWindows | None = None
        self.rows: dict[tuple, dict[str, object]] = {}
        if not self.static:
            view = project.feature_views[name]
            assert view.known_at is not None
            self.windows = OnlineWindows(self.keys, view.known_at, view_aggregations(project, name), EVENT_ID, horizon)
        if frame is not None:
            self.apply(frame)

    def apply(self, frame: pl.DataFrame) -> None:
        """Add events (idempotent by event id); a static view takes the latest row per key."""
        if self.windows is not None:
            self.windows.push(frame)
            return
        for row in frame.select(*self.keys, *self.names).iter_rows(named=True):
            self.rows[tuple(row[k] for k in self.keys)] = {n: row[n] for n in self.names}

    def lookup_columns(self, keys: Sequence[tuple]) -> ViewColumns:
        """A static view for a batch of keys: its row, or None for an unknown key; a view not loaded: values
        None. (Windowed views are read together: `OnlineFeatures.lookup_columns`.)"""
        n = len(keys)
        if not self.loaded:
            return ViewColumns(self.names, [[None] * n for _ in self.names], [None] * n, [False] * n)
        found = [self.rows.get(key) if None not in key else None for key in keys]
        columns = [[None if row is None else row[name] for row in found] for name in self.names]
        return ViewColumns(self.names, columns, [None] * n, [row is not None for row in found])


@dataclass(frozen=True)
class ViewColumns:
    """One view for a batch: per feature name a column of values, per query its age in seconds and
    whether anything is known for its key by its time."""

    names: list[str]
    columns: list[list[object]]
    ages: list[float | None]
    known: list[bool]


@dataclass
class Snapshot:
    """Every view as of one store generation, plus the pushes applied so far, and the readers of its
    windowed views (by the views a pass reads)."""

    generation: int
    last_seq: int
    views: dict[str, ViewState]
    lock: threading.Lock = field(default_factory=threading.Lock)
    readers: dict[tuple[str, ...], ViewsReader] = field(default_factory=dict)
    windowed_of: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict)

    def windowed(self, names: Sequence[str]) -> tuple[str, ...]:
        """Of `names`, the loaded windowed views (read together); the rest are static or not loaded."""
        key = tuple(names)
        found = self.windowed_of.get(key)
        if found is None:
            found = self.windowed_of[key] = tuple(v for v in key if self.views[v].windows is not None
                                                  and self.views[v].loaded)
        return found

    def reader(self, names: tuple[str, ...]) -> ViewsReader:
        reader = self.readers.get(names)
        if reader is None:
            reader = self.readers[names] = ViewsReader([self.views[n].windows for n in names])  # type: ignore[misc]
        return reader


class OnlineFeatures:
    """The served views of a project, kept in step with the online store."""

    def __init__(self, store: OnlineStore, project: Project, views: Sequence[str]) -> None:
        self.store, self.project, self.view_names = store, project, list(views)
        self.snapshot = Snapshot(-1, 0, {v: ViewState(project, v, None, None) for v in self.view_names})
        self._queried = float("-inf")

    def load(self) -> Snapshot:
        """A fresh snapshot of the store (events, static rows, every push so far), swapped in."""
        generation, stored = self.store.read_views(self.project, self.view_names)
        views = {name: ViewState(self.project, name, None if s is None else s.frame, None if s is None else s.horizon)
                 for name, s in stored.items()}
        snapshot = Snapshot(generation, 0, views)
        self._sync(snapshot)
        for view in views.values():  # here, off the request path: batches then read packed histories
            if view.windows is not None:
                view.windows.pack()
        self.snapshot = snapshot
        log.info("online store generation %s loaded: %s", generation,
                 {n: len(v.windows) if v.windows is not None else len(v.rows) for n, v in views.items()})
        return snapshot

    def refresh(self) -> bool:
        """Reload when the online store was rewritten since the snapshot (the watcher calls this)."""
        if self.store.generation() == self.snapshot.generation:
            return False
        self.load()
        return True

    def _sync(self, snapshot: Snapshot) -> None:
        """Apply what was pushed since the snapshot's seq. The store's push mark says when nothing was (no
        SQLite round trip on the request path: under load one cost ~1.7 ms of waiting); at least every
        QUERY_SECONDS the store is asked anyway, should the mark ever be lost."""
        now = time.monotonic()
        if now - self._queried < QUERY_SECONDS and not self.store.pushed_after(snapshot.last_seq):
            return
        self._queried = now
        last, frames = self.store.pushed_since(self.project, snapshot.last_seq, self.view_names)
        for name, frame in frames.items():
            snapshot.views[name].apply(frame)
        snapshot.last_seq = last

    def lookup_columns(self, views: Sequence[str], requests: Sequence[Mapping[str, object]],
                       times: Sequence[datetime]) -> BatchLookup:
        """Apply the pushes since the last call, then every view for the whole batch at the requests' times
        (a missing view's features are None, which scores and logs as absent): the windowed views in one
        compiled call (`ViewsReader`), a static view by key. Key columns are read once per request field;
        the values stay columns, as the model matrix and the log records read them. A number without a
        value reads NaN: the model reads it as missing, the log writes null."""
        snapshot, n = self.snapshot, len(requests)
        t_us = [epoch_us(t) for t in times]
        fields: dict[str, list[object]] = {}
        built: dict[tuple[str, ...], list[tuple]] = {}  # views keyed alike share their key tuples

        def keys_of(view: ViewState) -> list[tuple]:
            found = built.get(view.keys)
            if found is None:
                for k in view.keys:
                    if k not in fields:
                        fields[k] = [r.get(k) for r in requests]
                found = built[view.keys] = list(zip(*(fields[k] for k in view.keys), strict=True))
            return found

        columns: dict[str, list[object]] = {}
        ages: dict[str, list[float | None]] = {}
        known: dict[str, list[bool]] = {}
        with snapshot.lock:
            self._sync(snapshot)
            windowed = snapshot.windowed(views)
            keys = [keys_of(snapshot.views[v]) for v in windowed]
            read = snapshot.reader(windowed).read(keys, t_us) if windowed else None
            for name in views:
                view = snapshot.views[name]
                if name not in windowed:
                    found = view.lookup_columns(keys_of(view))
                    columns.update(zip(found.names, found.columns, strict=True))
                    ages[name], known[name] = found.ages, found.known
        if read is not None:
            self._windowed(windowed, keys, t_us, read, columns, ages, known)
        order = list(views)
        ages_by_query = zip(*(ages[v] for v in order), strict=True) if order else repeat((), n)
        known_by_query = zip(*(known[v] for v in order), strict=True) if order else repeat((), n)
        freshness = [dict(zip(order, age, strict=True)) for age in ages_by_query]
        missing = [[] if all(ok) else [v for v, k in zip(order, ok, strict=True) if not k] for ok in known_by_query]
        return BatchLookup(columns, freshness, missing)

    @staticmethod
    def _windowed(names: tuple[str, ...], keys: list[list[tuple]], t_us: list[int], read: ViewsRead,
                  columns: dict[str, list[object]], ages: dict[str, list[float | None]],
                  known: dict[str, list[bool]]) -> None:
        """The windowed views' columns, ages and whether each is known, from one read. A query with a key part
        absent reads the empty window, as offline (count 0, the rest null), and is not known; one before the
        history held (not complete) is missing: values None."""
        times = np.asarray(t_us, dtype=np.int64)
        latest = read.latest_us
        full: dict[int, list[bool]] = {}  # per key list (views keyed alike share one): no key part absent
        for listed in keys:
            if id(listed) not in full:
                full[id(listed)] = [None not in key for key in listed]
        whole = np.array([full[id(listed)] for listed in keys], dtype=bool).reshape(latest.shape)
        ok = (latest != NO_EVENT) & read.complete & whole
        age = np.maximum(0.0, (times - np.where(ok, latest, times)) / 1e6).astype(object)
        age[~ok] = None
        partial = whole & ~read.complete
        if partial.any():
            for v, i in zip(*np.nonzero(partial), strict=True):
                for column in read.values[v].values():
                    column[i] = None
        for values in read.values:
            columns.update(values)
        ages.update(zip(names, age.tolist(), strict=True))
        known.update(zip(names, ok.tolist(), strict=True))


@dataclass(frozen=True)
class BatchLookup:
    """A batch's view values as columns by feature name; per query its age in seconds per view (None:
    nothing known, or a static view) and the views missing: t before the history held (values None), a key
    part absent or nothing known for the key by t (values then are what training saw: counts 0, the rest
    None)."""

    columns: dict[str, list[object]]
    freshness: list[dict[str, float | None]]
    missing: list[list[str]]
