"""Deliveries: every file handed to the platform, kept immutable under its content hash, with its fate.

A delivery is a record (source, period, original name and path, size, sha256, when, by whom) and
its bytes in `deliveries/blobs/<sha256><suffix>`, which never change. Its status moves from
pending to ingested, rejected or failed; ingesting a newer delivery of the same source and period
supersedes the older one (both records and both files kept); `discard` retires one that must never
be ingested. A run ingests the deliveries its tags name, never "whatever is newest".

Holds are the other ledger: a valid batch whose meaning looks shifted is ingested, but a hold is
recorded, and while any hold is open no challenger becomes champion without approval.

SQLite keeps both, so the sensor, a run and the CLI can update them from different processes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SUFFIXES = (".csv", ".parquet")
DELIVERY_TAG = "mlops/deliveries"
ID_PATTERN = re.compile(r"^d?0*(?P<n>\d+)$")
RETRYABLE = ("pending", "rejected", "failed", "superseded")

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, period TEXT NOT NULL,
    original_name TEXT NOT NULL, original_path TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    suffix TEXT NOT NULL, landed_at TEXT NOT NULL, landed_by TEXT NOT NULL, status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', quarantine TEXT NOT NULL DEFAULT '', run_id TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS deliveries_by_period ON deliveries (source, period, status);
CREATE TABLE IF NOT EXISTS holds (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, period TEXT NOT NULL,
    delivery_id INTEGER, reason TEXT NOT NULL, report TEXT NOT NULL, created_at TEXT NOT NULL,
    run_id TEXT NOT NULL, released_at TEXT NOT NULL DEFAULT '', released_by TEXT NOT NULL DEFAULT '');
"""


class DeliveryError(ValueError):
    """A delivery command refused (unknown id, wrong status); the message says what to do instead."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def delivery_name(delivery_id: int) -> str:
    return f"d{delivery_id:06d}"


@dataclass(frozen=True)
class Delivery:
    """One landed file and what became of it."""

    id: int
    source: str
    period: str
    original_name: str
    original_path: str
    size: int
    sha256: str
    suffix: str
    landed_at: str
    landed_by: str
    status: str
    reason: str
    quarantine: str
    run_id: str
    attempts: int
    updated_at: str
    blob: Path

    @property
    def name(self) -> str:
        return delivery_name(self.id)

    def describe(self) -> str:
        """Which file this is, in words an alert can carry."""
        return (f"delivery {self.name} of {self.source} {self.period} ({self.original_name}, "
                f"sha256 {self.sha256[:12]}, {self.size:,} bytes)")


@dataclass(frozen=True)
class Hold:
    """A period whose data is valid but shifted: challengers trained on it wait for approval."""

    id: int
    source: str
    period: str
    delivery_id: int | None
    reason: str
    report: str
    created_at: str
    run_id: str
    released_at: str
    released_by: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_delivery_id(text: str) -> int:
    match = ID_PATTERN.match(text.strip())
    if not match:
        raise DeliveryError(f"{text!r} is not a delivery id (write d000012 or 12; `mlops-assets deliveries` lists them)")
    return int(match["n"])


def run_delivery_ids(tags: dict[str, str]) -> list[int]:
    """The deliveries a run was started for (its `mlops/deliveries` tag)."""
    return [int(part) for part in tags.get(DELIVERY_TAG, "").split(",") if part.strip().isdigit()]


class DeliveryLedger:
    """Records and immutable bytes of every delivery, plus the holds, under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs"
        self.path = root / "ledger.db"

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        self.root.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        connection.row_factory = sqlite3.Row
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)
            connection.execute("BEGIN IMMEDIATE")
            yield connection
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        finally:
            connection.close()

    def _delivery(self, row: sqlite3.Row) -> Delivery:
        values = dict(row)
        return Delivery(**values, blob=self.blob_dir / f"{values['sha256']}{values['suffix']}")

    def add(self, path: Path, source: str, period: str, landed_by: str) -> Delivery:
        """Keep the file's bytes under their hash (written once, atomically) and record it as pending."""
        digest = sha256_of(path)
        suffix = path.suffix.lower() if path.suffix.lower() in SUFFIXES else path.suffix.lower() or ".bin"
        blob = self.blob_dir / f"{digest}{suffix}"
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            tmp = blob.with_name(f".{blob.name}.{os.getpid()}.tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, blob)
        now = _now()
        with self._db() as db:
            cursor = db.execute(
                "INSERT INTO deliveries (source, period, original_name, original_path, size, sha256, suffix, "
                "landed_at, landed_by, status, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                (source, period, path.name, str(path.resolve()), blob.stat().st_size, digest, suffix, now,
                 landed_by, now))
            return self._delivery(db.execute("SELECT * FROM deliveries WHERE id = ?", (cursor.lastrowid,)).fetchone())

    def get(self, delivery_id: int) -> Delivery:
        with self._db() as db:
            row = db.execute("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
        if row is None:
            raise DeliveryError(f"no delivery {delivery_name(delivery_id)} (`mlops-assets deliveries` lists them)")
        return self._delivery(row)

    def all(self, source: str | None = None, period: str | None = None) -> list[Delivery]:
        query, args = "SELECT * FROM deliveries WHERE 1=1", []
        if source:
            query, args = query + " AND source = ?", [*args, source]
        if period:
            query, args = query + " AND period = ?", [*args, period]
        if not self.path.exists():
            return []
        with self._db() as db:
            return [self._delivery(r) for r in db.execute(query + " ORDER BY id", args).fetchall()]

    def pending(self) -> list[Delivery]:
        return [d for d in self.all() if d.status == "pending"]

    def current(self, source: str, period: str) -> Delivery | None:
        """The ingested delivery of a source and period: what the warehouse holds for it."""
        found = [d for d in self.all(source, period) if d.status == "ingested"]
        return found[-1] if found else None

    def _set(self, db: sqlite3.Connection, delivery_id: int, **fields: object) -> None:
        columns = ", ".join(f"{k} = ?" for k in fields)
        db.execute(f"UPDATE deliveries SET {columns}, updated_at = ? WHERE id = ?",  # noqa: S608 - fixed names
                   (*fields.values(), _now(), delivery_id))

    def mark_ingested(self, delivery: Delivery, run_id: str) -> list[int]:
        """This delivery is now the period's data; the one it replaces is superseded. Returns those ids."""
        with self._db() as db:
            older = [r["id"] for r in db.execute(
                "SELECT id FROM deliveries WHERE source = ? AND period = ? AND status = 'ingested' AND id != ?",
                (delivery.source, delivery.period, delivery.id)).fetchall()]
            for old in older:
                self._set(db, old, status="superseded", reason=f"superseded by {delivery.name}")
            self._set(db, delivery.id, status="ingested", reason="", run_id=run_id)
        return older

    def mark_rejected(self, delivery_id: int, run_id: str, reason: str, quarantine: str) -> None:
        with self._db() as db:
            self._set(db, delivery_id, status="rejected", reason=reason[:2000], quarantine=quarantine, run_id=run_id)

    def mark_failed(self, delivery_id: int, run_id: str, reason: str) -> bool:
        """A run that was to ingest a pending delivery failed for another reason: retryable."""
        with self._db() as db:
            row = db.execute("SELECT status FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
            if row is None or row["status"] != "pending":
                return False
            self._set(db, delivery_id, status="failed", reason=reason[:2000], run_id=run_id)
        return True

    def retry(self, delivery_id: int) -> Delivery:
        """Make a delivery pending again (a new attempt, a new run key)."""
        delivery = self.get(delivery_id)
        if delivery.status not in RETRYABLE:
            why = ("it is the period's current data already" if delivery.status == "ingested"
                   else "it was discarded; land the file again to deliver it anew")
            raise DeliveryError(f"{delivery.name} is {delivery.status}: {why}")
        with self._db() as db:
            self._set(db, delivery_id, status="pending", reason="", attempts=delivery.attempts + 1)
        return self.get(delivery_id)

    def discard(self, delivery_id: int, reason: str) -> Delivery:
        """Retire a delivery that must never be ingested; its bytes and record stay."""
        delivery = self.get(delivery_id)
        if delivery.status in ("ingested", "discarded"):
            why = ("it is the period's current data: land a replacement or retry an earlier delivery"
                   if delivery.status == "ingested" else "it is discarded already")
            raise DeliveryError(f"{delivery.name} cannot be discarded: {why}")
        with self._db() as db:
            self._set(db, delivery_id, status="discarded", reason=f"discarded: {reason}"[:2000])
        return self.get(delivery_id)

    def add_hold(self, source: str, period: str, delivery_id: int | None, reason: str, report: str,
                 run_id: str) -> Hold:
        with self._db() as db:
            cursor = db.execute(
                "INSERT INTO holds (source, period, delivery_id, reason, report, created_at, run_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (source, period, delivery_id, reason, report, _now(), run_id))
            return Hold(**dict(db.execute("SELECT * FROM holds WHERE id = ?", (cursor.lastrowid,)).fetchone()))

    def open_holds(self) -> list[Hold]:
        if not self.path.exists():
            return []
        with self._db() as db:
            rows = db.execute("SELECT * FROM holds WHERE released_at = '' ORDER BY id").fetchall()
        return [Hold(**dict(r)) for r in rows]

    def release_period(self, source: str, period: str, released_by: str) -> None:
        """New data for a held period that is no longer shifted lifts that period's holds."""
        self.release_holds([h.id for h in self.open_holds() if (h.source, h.period) == (source, period)],
                           released_by)

    def release_holds(self, hold_ids: list[int], released_by: str) -> None:
        with self._db() as db:
            for hold_id in hold_ids:
                db.execute("UPDATE holds SET released_at = ?, released_by = ? WHERE id = ? AND released_at = ''",
                           (_now(), released_by, hold_id))
