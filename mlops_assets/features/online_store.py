"""The online store: each feature view's recent events in SQLite, plus the events pushed since.

Per view, `events__<view>` holds the events the view's windows read (keys, known_at, inputs and
an event id; datetimes as epoch µs), written by `write_view_events` into a staging table a million
rows per transaction and swapped in by one short transaction (readers see the old view or the new
one), which also records the view's horizon (events known at or before it are not kept) and bumps the
store's generation so serving reloads. A static view (a reference table, no known_at) is
`static__<view>`: the latest row per key. `pushed_events` is an append-only log of events pushed
by clients (seq order, idempotent by (view, event id)); serving applies it before each request,
training appends it to the offline events (`pushed_frame`).
"""

from __future__ import annotations

import json
import mmap
import os
import sqlite3
import struct
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import polars as pl

from mlops_assets.features.event_codec import (
    EventError,
    decode,
    encode_frame,
    event_id_expr,
    parse_pushed,
    view_dtypes,
)
from mlops_assets.features.repository import FOREVER, is_static, view_keys
from mlops_assets.project.spec import Project

EVENT_ID = "__event_id"
SEQ = "__seq"
WRITE_CHUNK_ROWS = 100_000  # rows given event ids and turned into tuples at a time: memory bounded by it
COMMIT_ROWS = 1_000_000  # rows per transaction of a view's bulk write (into its staging table)
T = TypeVar("T")
__all__ = ["EVENT_ID", "SEQ", "EventError", "OnlineStore", "PushResult", "StoredView", "UnknownSource",
           "default_retention"]
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS views (view TEXT PRIMARY KEY, static INTEGER, horizon_us INTEGER, rows INTEGER,
                                  generation INTEGER, written_at TEXT);
CREATE TABLE IF NOT EXISTS pushed_events (seq INTEGER PRIMARY KEY, view TEXT NOT NULL, event_id TEXT NOT NULL,
                                          payload TEXT NOT NULL, pushed_at TEXT, UNIQUE(view, event_id));
"""


@dataclass(frozen=True)
class PushResult:
    """Events newly stored (in at least one view), already held, and usable by no view."""

    accepted: int
    duplicates: int
    unused: int = 0


@dataclass(frozen=True)
class StoredView:
    """One view as written: its events (or static rows) typed by the source schema, and its horizon."""

    name: str
    static: bool
    frame: pl.DataFrame
    horizon: datetime | None


class UnknownSource(LookupError):
    """A push to a source the project does not declare, or that feeds no feature view."""


def default_retention(project: Project, view_name: str, slack: timedelta = timedelta(days=1)) -> timedelta | None:
    """Enough history for every window of the view ending now (None: keep everything, e.g. no TTL)."""
    view = project.feature_views[view_name]
    windows = [w for a in view.aggregations for w in a.windows]
    if view.features:
        windows.append(view.ttl or FOREVER)
    longest = max(windows, default=FOREVER)
    return None if longest >= FOREVER else longest + slack


def _table(project: Project, view_name: str) -> str:
    return f"{'static' if is_static(project, view_name) else 'events'}__{view_name}"


def _epoch_us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


class PushMark:
    """The newest pushed seq in 8 bytes of shared memory beside the store (`<store>.pushed`, memory-mapped
    by every process): a reader learns that nothing was pushed without a SQLite round trip. Writers set it
    inside their write transaction (SQLite serialises them, so it only grows), before the commit, so a
    reader that sees it unchanged has nothing new to fetch; one that sees it moved queries, and takes the
    seq from the rows it gets."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < MARK_BYTES:
                os.ftruncate(fd, MARK_BYTES)
            self._map = mmap.mmap(fd, MARK_BYTES)
        finally:
            os.close(fd)

    def read(self) -> int:
        return int(struct.unpack_from("<q", self._map)[0])

    def write(self, seq: int) -> None:
        struct.pack_into("<q", self._map, 0, seq)


MARK_BYTES = 8


class OnlineStore:
    """SQLite-backed store (WAL); one connection per thread; every write is one transaction."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._mark: PushMark | None = None
        self._mark_failed = False

    def push_mark(self) -> PushMark | None:
        """The store's push mark (None where it cannot be mapped, e.g. a read-only folder: then every
        reader queries)."""
        if self._mark is None and not self._mark_failed:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._mark = PushMark(self.path.with_name(self.path.name + ".pushed"))
            except (OSError, ValueError):
                self._mark_failed = True
        return self._mark

    def pushed_after(self, seq: int) -> bool:
        """Whether events with a seq above `seq` may have been pushed (True unless the mark says no)."""
        mark = self.push_mark()
        return mark is None or mark.read() > seq

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            self._local.conn = conn
        return conn

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` inside BEGIN IMMEDIATE ... COMMIT (rolled back on any error): readers see all or nothing."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def generation(self) -> int:
        """Bumped by every `write_view_events`: serving reloads its windows when it changes."""
        row = self._conn().execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def last_seq(self) -> int:
        return self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM pushed_events").fetchone()[0]

    def write_view_events(self, project: Project, view_name: str, events: pl.DataFrame,
                          retention: timedelta | None = None) -> int:
        """Replace the view's table by its events known after max(known_at) - retention (a static view:
        the latest row per key); returns the rows kept.

        The rows go to a staging table first; one short transaction then renames it in, with the view's
        row and the generation, so a reader sees the old view or the new one, never a part of it."""
        view = project.feature_views[view_name]
        dtypes = view_dtypes(project, view_name)
        keys = view_keys(project, view_name)
        lazy = events.lazy().select([pl.col(c).cast(t) for c, t in dtypes.items() if c in events.columns])
        lazy = lazy.drop_nulls(keys)  # one plan: no full-size intermediate copy per step
        horizon = None
        if view.known_at is None:
            frame = lazy.unique(subset=keys, keep="last", maintain_order=True).collect()
        else:
            frame = lazy.drop_nulls([view.known_at]).sort(view.known_at, maintain_order=True).collect()
            latest = frame[view.known_at].max()
            if retention is not None and latest is not None:
                horizon = _as_utc(latest) - retention
                frame = frame.filter(pl.col(view.known_at) > horizon)
        columns = [c for c in dtypes if c in frame.columns]
        affinity = {c: "REAL" if dtypes[c] == pl.Float64 else "TEXT" if dtypes[c] == pl.String else "INTEGER"
                    for c in columns}
        definition = ", ".join([*(f'"{c}" {affinity[c]}' for c in columns), f'"{EVENT_ID}" TEXT'])
        table, tag = _table(project, view_name), uuid.uuid4().hex[:12]
        staging = f"{table}#new#{tag}"
        self._drop_tables(self._tables_starting(f"{table}#old#"))  # left by a writer stopped after its swap
        self._conn().execute(f'CREATE TABLE "{staging}" ({definition})')
        try:
            self._fill(staging, frame, event_id_expr(view, dtypes).alias(EVENT_ID), columns, dtypes)
            row = (view_name, int(view.known_at is None), None if horizon is None else _epoch_us(horizon),
                   frame.height)
            old = self._transaction(lambda conn: self._swap(conn, table, staging, f"{table}#old#{tag}", row))
        except BaseException:
            self._drop_tables([staging])
            raise
        self._drop_tables([old] if old else [])
        return frame.height

    def _fill(self, staging: str, frame: pl.DataFrame, event_id: pl.Expr, columns: list[str],
              dtypes: dict[str, pl.DataType]) -> None:
        """The rows into a table no reader looks at, a transaction per `COMMIT_ROWS`: the WAL stays small
        (checkpointed between them), so the cost per row does not grow with the view, and pushes wait
        for one chunk at most, not the whole view."""
        marks = ", ".join("?" * (len(columns) + 1))
        for part in frame.iter_slices(COMMIT_ROWS):
            def insert(conn: sqlite3.Connection, part: pl.DataFrame = part) -> None:
                for chunk in part.iter_slices(WRITE_CHUNK_ROWS):  # ids, storage values, tuples: a chunk at a time
                    encoded = encode_frame(chunk.with_columns(event_id), [*columns, EVENT_ID], dtypes)
                    conn.executemany(f'INSERT INTO "{staging}" VALUES ({marks})', encoded.iter_rows())
            self._transaction(insert)

    def _swap(self, conn: sqlite3.Connection, table: str, staging: str, old: str,
              row: tuple[str, int, int | None, int]) -> str | None:
        """Readers' switch to the new rows, in one short transaction: the view's table renamed away (to
        `old`, returned if there was one), the staging table renamed in, the view's row and generation."""
        generation = self.generation() + 1
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
        if exists:
            conn.execute(f'ALTER TABLE "{table}" RENAME TO "{old}"')
        conn.execute(f'ALTER TABLE "{staging}" RENAME TO "{table}"')
        conn.execute("INSERT OR REPLACE INTO views VALUES (?, ?, ?, ?, ?, ?)",
                     (*row, generation, datetime.now(UTC).isoformat()))
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(generation),))
        return old if exists else None

    def _drop_tables(self, names: list[str]) -> None:
        """Drop tables no reader looks at (a swapped-out view or a failed write's staging), a transaction each."""
        for name in names:
            self._transaction(lambda conn, name=name: conn.execute(f'DROP TABLE IF EXISTS "{name}"'))

    def _tables_starting(self, prefix: str) -> list[str]:
        rows = self._conn().execute("SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, ?) = ?",
                                    (len(prefix), prefix))
        return [r[0] for r in rows]

    def read_view(self, project: Project, view_name: str) -> StoredView | None:
        """The view as last written (None if never written), typed by its source's schema."""
        conn = self._conn()
        info = conn.execute("SELECT horizon_us FROM views WHERE view = ?", (view_name,)).fetchone()
        if info is None:
            return None
        dtypes = view_dtypes(project, view_name)
        cursor = conn.execute(f'SELECT * FROM "{_table(project, view_name)}" ORDER BY rowid')
        names = [d[0] for d in cursor.description]
        frame = decode(cursor.fetchall(), names, dtypes)
        horizon = None if info[0] is None else datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=info[0])
        return StoredView(view_name, is_static(project, view_name), frame, horizon)

    def read_views(self, project: Project, names: list[str]) -> tuple[int, dict[str, StoredView | None]]:
        """Several views and the generation they belong to, read in one snapshot (a read transaction)."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            return self.generation(), {n: self.read_view(project, n) for n in names}
        finally:
            conn.execute("COMMIT")

    def count(self, project: Project, view_name: str) -> int:
        return self._conn().execute(f'SELECT COUNT(*) FROM "{_table(project, view_name)}"').fetchone()[0]

    def push(self, project: Project, source_name: str, rows: list[object]) -> PushResult:
        """Append events of a source to every view reading it (rows whose keys and known_at are set);
        idempotent by (view, event id). Raises UnknownSource or EventError (nothing stored then)."""
        views = [v for v, spec in project.feature_views.items() if spec.source == source_name]
        if source_name not in project.sources:
            raise UnknownSource(f"unknown source {source_name[:40]!r}; the project declares {sorted(project.sources)}")
        if not views:
            raise UnknownSource(f"source {source_name!r} feeds no feature view; nothing to push")
        parsed = parse_pushed(project, source_name, views, rows)
        now = datetime.now(UTC).isoformat()
        plans = []
        for view_name in views:
            view, dtypes = project.feature_views[view_name], view_dtypes(project, view_name)
            frame = decode([tuple(r.get(c) for c in dtypes) for r, _ in parsed], list(dtypes), dtypes)
            frame = frame.with_columns(pl.Series("__explicit", [e for _, e in parsed], dtype=pl.String),
                                       pl.Series("__row", range(len(parsed))))
            needed = [*view_keys(project, view_name), *([view.known_at] if view.known_at else [])]
            frame = frame.drop_nulls(needed).with_columns(
                pl.coalesce("__explicit", event_id_expr(view, dtypes)).alias(EVENT_ID))
            for row, event_id in frame.select("__row", EVENT_ID).iter_rows():
                payload = json.dumps({c: parsed[row][0].get(c) for c in dtypes}, separators=(",", ":"))
                plans.append((row, view_name, event_id, payload))

        def work(conn: sqlite3.Connection) -> PushResult:
            stored, matched, newest = set(), set(), 0
            for row, view_name, event_id, payload in plans:
                cursor = conn.execute("INSERT OR IGNORE INTO pushed_events (view, event_id, payload, pushed_at) "
                                      "VALUES (?, ?, ?, ?)", (view_name, event_id, payload, now))
                matched.add(row)
                if cursor.rowcount:
                    stored.add(row)
                    newest = max(newest, int(cursor.lastrowid or 0))
            mark = self.push_mark()
            if newest and mark is not None:
                mark.write(max(newest, mark.read()))
            return PushResult(len(stored), len(matched - stored), len(parsed) - len(matched))

        return self._transaction(work)

    def pushed_since(self, project: Project, after_seq: int,
                     views: list[str] | None = None) -> tuple[int, dict[str, pl.DataFrame]]:
        """Pushed events with seq > after_seq, per view (typed like `read_view`, with EVENT_ID and SEQ),
        and the newest seq seen: one indexed query, cheap enough for every request."""
        rows = self._conn().execute("SELECT seq, view, event_id, payload FROM pushed_events WHERE seq > ? "
                                    "ORDER BY seq", (after_seq,)).fetchall()
        if not rows:
            return after_seq, {}
        by_view: dict[str, list[tuple]] = {}
        for seq, view_name, event_id, payload in rows:
            if view_name in project.feature_views and (views is None or view_name in views):
                by_view.setdefault(view_name, []).append((seq, event_id, json.loads(payload)))
        frames = {}
        for view_name, items in by_view.items():
            dtypes = view_dtypes(project, view_name)
            frame = decode([tuple(p.get(c) for c in dtypes) + (e,) for _, e, p in items], [*dtypes, EVENT_ID], dtypes)
            frames[view_name] = frame.with_columns(pl.Series(SEQ, [s for s, _, _ in items], dtype=pl.Int64))
        return rows[-1][0], frames

    def pushed_frame(self, project: Project, view_name: str, after_seq: int = 0) -> pl.DataFrame:
        """The view's pushed events in push order (columns of the view, EVENT_ID, SEQ): for training."""
        _, frames = self.pushed_since(project, after_seq, [view_name])
        if view_name in frames:
            return frames[view_name]
        dtypes = view_dtypes(project, view_name)
        return pl.DataFrame(schema={**dtypes, EVENT_ID: pl.String, SEQ: pl.Int64})


def _as_utc(moment: datetime | date) -> datetime:
    if not isinstance(moment, datetime):
        return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
