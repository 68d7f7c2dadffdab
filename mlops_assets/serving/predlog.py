"""The prediction log: every scored instance and every refused request, appended off the hot path.

Requests put records on a bounded queue; one writer thread per process drains it in batches into
`<log_dir>/date=YYYY-MM-DD/part-<writer>-<seq>.jsonl` and flushes + fsyncs at least every
`flush_seconds`. A full queue blocks the request (back-pressure) instead of dropping a record; a
clean shutdown drains the queue. Writer ids are unique per process start, so a restart or a second
worker never appends to another writer's file, and nothing is written twice.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import threading
import time
import uuid
from datetime import UTC, datetime
from datetime import date as Date
from pathlib import Path
from typing import IO

import polars as pl

log = logging.getLogger(__name__)
STOP = object()
DRAIN_MAX = 2_000
LOG_FOLDER = "prediction_log"
COMPACT = (",", ":")


class PredictionLog:
    """Bounded queue + writer thread; `put` is the only call on the request path."""

    def __init__(
        self, root: Path, queue_size: int = 10_000, flush_seconds: float = 1.0, file_records: int = 100_000
    ) -> None:
        self.root = root
        self.flush_seconds = flush_seconds
        self.file_records = file_records
        self.writer_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._file: IO[str] | None = None
        self._file_date = ""
        self._file_count = 0
        self._seq = 0
        self._last_sync = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def put(self, record: dict[str, object]) -> None:
        """Queue one record; blocks while the queue is full (never drops), fails only if the writer died."""
        while True:
            try:
                self.queue.put(record, timeout=1.0)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    raise RuntimeError("prediction log writer is not running") from None

    def close(self, timeout: float = 30.0) -> None:
        """Drain everything queued, fsync and close (called from the app's shutdown)."""
        if self._thread.is_alive():
            self.queue.put(STOP)
            self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = self._take()
            stopping = any(item is STOP for item in batch)
            records = [item for item in batch if isinstance(item, dict)]
            if records:
                self._write_with_retry(records)
            if stopping or time.monotonic() - self._last_sync >= self.flush_seconds:
                self._sync()
        self._close_file()

    def _take(self) -> list[object]:
        """Wait up to the flush interval for a first record, then take whatever else is queued."""
        try:
            batch = [self.queue.get(timeout=self.flush_seconds)]
        except queue.Empty:
            return []
        while len(batch) < DRAIN_MAX:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write_with_retry(self, records: list[dict[str, object]]) -> None:
        """A full disk or a vanished folder must not lose records: retry until it works."""
        lines = [(str(r["timestamp"])[:10], json.dumps(r, default=str, separators=COMPACT)) for r in records]
        while True:
            try:
                self._write(lines)
                return
            except OSError:
                log.exception("prediction log write failed; retrying in 1 s")
                self._close_file()
                time.sleep(1.0)

    def _write(self, lines: list[tuple[str, str]]) -> None:
        for day, line in lines:
            handle = self._handle(day)
            handle.write(line + "\n")
            self._file_count += 1
            self.written += 1

    def _handle(self, day: str) -> IO[str]:
        """The open part file for the record's day; a new part on a new day or when the part is full."""
        if self._file is None or day != self._file_date or self._file_count >= self.file_records:
            self._close_file()
            self._seq += 1
            folder = self.root / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"part-{self.writer_id}-{self._seq:05d}.jsonl"
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across batches
            self._file_date, self._file_count = day, 0
        return self._file

    def _sync(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
        self._last_sync = time.monotonic()

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._sync()
            finally:
                self._file.close()
                self._file = None


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
