"""The prediction log: every scored instance and every refused request, durable before it is answered.

Requests `submit` their records and await the returned future; one writer thread per process takes
everything queued, appends it to `<log_dir>/date=YYYY-MM-DD/part-<writer>-<seq>.jsonl` with one
synchronous write (the part is opened O_DSYNC: the write returns once data and size are on disk, as a
write and an fdatasync would, in one system call; group commit), then resolves the futures with True.
So an answered request's record survives kill -9 and power loss, and concurrent requests share a sync.
Each system call the writer makes hands the GIL back and forth with the request thread: measured with
strace, the writer's calls were most of a single-row pass's ~20 futex calls, so it makes as few as it can.

The writer never dies. On any OSError (full disk, read-only file system, the folder deleted or
replaced) it undoes the partial write, keeps the batch, resolves its futures with False (the
service answers "not logged" or refuses, as configured), reports itself degraded and retries with
backoff; every held and newly queued record is written exactly once when the disk takes it again.
A part file that was deleted or replaced under the writer is detected by comparing the inode of
the path with the open file before and after each commit; the batch then goes to a new part file.
Writer ids are unique per process start, so a restart or a second worker never appends to another
writer's file.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import date as Date
from pathlib import Path
from typing import Literal

import polars as pl

from mlops_assets.serving.encoding import encode_record
from mlops_assets.serving.partfiles import Part, fsync_dir, write_all

log = logging.getLogger(__name__)
DRAIN_MAX = 5_000
LOG_FOLDER = "prediction_log"
RETRY_FIRST, RETRY_MAX = 0.05, 2.0
AckMode = Literal["fsync", "queued"]


class LogFull(Exception):
    """The in-memory backlog is at its bound (the disk has been failing for a while)."""


@dataclass
class Entry:
    """One request's records (serialised) and the future its response waits on."""

    lines: list[tuple[str, bytes]]
    future: Future[bool]


def _settle(future: Future[bool], durable: bool) -> None:
    if not future.done():
        future.set_result(durable)


class PredictionLog:
    """The backlog and the writer thread; `submit` is the only call on the request path (never blocks)."""

    def __init__(self, root: Path, queue_size: int = 10_000, file_records: int = 100_000, ack: AckMode = "fsync",
                 flush_seconds: float = 1.0, on_change: Callable[[bool, str], None] | None = None) -> None:
        self.root, self.limit, self.file_records = root, queue_size, file_records
        self.ack, self.flush_seconds, self.on_change = ack, flush_seconds, on_change
        self.writer_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.written = self.dropped = self.lost = self.commits = 0
        self.degraded_reason = ""
        self._deadline = float("inf")
        self._queue: deque[Entry] = deque()
        self._backlog = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._part: Part | None = None
        self._seq = 0
        self._last_sync = time.monotonic()

    @property
    def degraded(self) -> bool:
        return bool(self.degraded_reason)

    @property
    def backlog(self) -> int:
        """Records accepted but not yet durable (queued or held by a failing writer)."""
        return self._backlog

    def start(self) -> None:
        self._thread.start()

    def submit(self, records: list[dict[str, object]]) -> Future[bool]:
        """Queue a request's records; the future turns True once they are durable, False if the disk
        is failing now (they stay queued and are written later). LogFull when the backlog is at its bound."""
        lines = [(str(r["timestamp"])[:10], encode_record(r)) for r in records]
        future: Future[bool] = Future()
        with self._cond:
            if self._backlog >= self.limit:
                self.dropped += len(lines)
                raise LogFull(f"prediction log backlog at its limit of {self.limit} records")
            if self.degraded or self.ack == "queued" or not self._thread.is_alive():
                _settle(future, self.ack == "queued" and not self.degraded)
            self._queue.append(Entry(lines, future))
            self._backlog += len(lines)
            self._cond.notify()
        return future

    def close(self, timeout: float = 30.0) -> None:
        """Write everything accepted, fsync and close (the app's shutdown); a failing disk is retried
        until `timeout`, then what is left is reported as lost."""
        with self._cond:
            self._stopping = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout + 5)

    def _take(self) -> list[Entry] | None:
        """Everything queued (up to DRAIN_MAX records); None once stopping with nothing left."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait(self.flush_seconds if self.ack == "queued" else None)
                if self.ack == "queued" and not self._queue:
                    return []
            if not self._queue:
                return None
            taken, count = [], 0
            while self._queue and count < DRAIN_MAX:
                entry = self._queue.popleft()
                taken.append(entry)
                count += len(entry.lines)
            return taken

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            lines = [line for entry in batch for line in entry.lines]
            if lines:
                self._commit_until_done(batch, lines)
            else:
                self._sync_if_due()
        self._close_part()

    def _sync_if_due(self) -> None:
        """In `queued` mode records are fsynced at least every `flush_seconds`."""
        part = self._part
        if part is not None and time.monotonic() - self._last_sync >= self.flush_seconds:
            self._guard(lambda: os.fsync(part.fd))
            self._last_sync = time.monotonic()

    def _commit_until_done(self, batch: list[Entry], lines: list[tuple[str, bytes]]) -> None:
        """Retry with backoff until the batch is on disk; while failing, later records join the held batch."""
        delay = RETRY_FIRST
        while True:
            try:
                self._commit(lines)
                break
            except OSError as exc:
                self._degrade(exc, batch)
                with self._cond:
                    if self._stopping and time.monotonic() >= self._deadline:
                        log.error("prediction log: %d records not written at shutdown (%s)", len(lines), exc)
                        self._backlog -= len(lines)
                        self.lost += len(lines)
                        return
                    self._cond.wait(delay)
                    while self._queue:
                        entry = self._queue.popleft()
                        batch.append(entry)
                        lines.extend(entry.lines)
                        _settle(entry.future, False)
                delay = min(delay * 2, RETRY_MAX)
        self.commits += 1
        if self.degraded:
            self._recover()
        for entry in batch:
            _settle(entry.future, True)

    def _commit(self, lines: list[tuple[str, bytes]]) -> None:
        """Append and fsync the lines, day by day; what is committed leaves `lines`, so a retry after an
        error writes only the rest. A partial write is truncated away before the error goes up."""
        while lines:
            day = lines[0][0]
            count = next((i for i, (d, _) in enumerate(lines) if d != day), len(lines))
            part = self._open(day)
            data = b"".join(line for _, line in lines[:count])
            try:
                write_all(part.fd, data)  # in fsync mode the file is O_DSYNC: durable when the write returns
                if self.ack == "queued" and time.monotonic() - self._last_sync >= self.flush_seconds:
                    os.fdatasync(part.fd)  # data and the file size; not the times
                    self._last_sync = time.monotonic()
            except OSError as exc:
                self._undo(part, lines, getattr(exc, "written", len(data)))
                raise
            if not part.linked():
                log.error("prediction log file %s was deleted or replaced; rewriting its last batch", part.path)
                self._close_part()
                continue
            part.size += len(data)
            part.records += count
            self._committed(lines, count)

    def _committed(self, lines: list[tuple[str, bytes]], count: int) -> None:
        del lines[:count]
        with self._cond:
            self._backlog -= count
            self.written += count

    def _undo(self, part: Part, lines: list[tuple[str, bytes]], written: int) -> None:
        """Cut the file back to before this write; if that fails, keep the whole lines it did write
        (they are on disk) and leave the file, so no record is written twice."""
        try:
            os.ftruncate(part.fd, part.size)
            return
        except OSError:
            pass
        done, end = 0, 0
        for _, line in lines:
            if end + len(line) > written:
                break
            end += len(line)
            done += 1
        self._committed(lines, done)
        self._close_part()

    def _open(self, day: str) -> Part:
        """The part file for the day: a new one on a new day, when full, or when the old one vanished."""
        part = self._part
        if part is not None and part.day == day and part.records < self.file_records:
            return part  # a part deleted meanwhile is noticed after the write (`_commit`), which then rewrites
        self._close_part()
        self._seq += 1
        folder = self.root / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{self.writer_id}-{self._seq:05d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_DSYNC if self.ack == "fsync" else 0), 0o644)
        self._part = Part.opened(day, path, fd)
        fsync_dir(folder)
        return self._part

    def _close_part(self) -> None:
        if self._part is not None:
            part, self._part = self._part, None
            self._guard(lambda: os.fsync(part.fd))
            self._guard(lambda: os.close(part.fd))

    def _guard(self, step: Callable[[], object]) -> None:
        try:
            step()
        except OSError as exc:
            log.warning("prediction log: %s", exc)

    def _degrade(self, exc: OSError, batch: list[Entry]) -> None:
        for entry in batch:
            _settle(entry.future, False)
        if self.degraded:
            return
        self.degraded_reason = f"{type(exc).__name__}: {exc.strerror or exc}"
        log.error("prediction log cannot write to %s (%s); holding records and retrying", self.root,
                  self.degraded_reason)
        if self.on_change is not None:
            self.on_change(True, self.degraded_reason)

    def _recover(self) -> None:
        reason, self.degraded_reason = self.degraded_reason, ""
        log.warning("prediction log writes again (was: %s)", reason)
        if self.on_change is not None:
            self.on_change(False, reason)


def _complete_lines(path: Path) -> bytes:
    """Whole records only: a torn last line (crash mid-write) is not a record."""
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]


def read_prediction_log(
    state_dir: Path | str, date: str | Date | None = None, log_dir: Path | str | None = None
) -> pl.DataFrame:
    """All records (or one day's) as a DataFrame, for monitoring; `timestamp` parsed to UTC datetimes."""
    root = Path(log_dir) if log_dir is not None else Path(state_dir) / LOG_FOLDER
    days = f"date={date}" if date is not None else "date=*"
    frames = []
    for path in sorted(root.glob(f"{days}/part-*.jsonl")):
        data = _complete_lines(path)
        if data:
            frames.append(pl.read_ndjson(io.BytesIO(data), infer_schema_length=None))
    if not frames:
        return pl.DataFrame(
            schema={
                "request_id": pl.String,
                "timestamp": pl.Datetime("us", "UTC"),
                "status": pl.Int64,
                "arm": pl.String,
            }
        )
    frame = pl.concat(frames, how="diagonal_relaxed")
    return frame.with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC", time_unit="us"))
