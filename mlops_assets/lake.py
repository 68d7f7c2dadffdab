"""The local data lake: landing inbox, deliveries, validated batches, quarantine, offline store.

Every file the pipeline reads or writes goes through `Lake`, so the layout is defined once and a
different backend (object storage) would replace this one class.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from mlops_assets.ingestion.deliveries import DeliveryLedger

if TYPE_CHECKING:
    import pandas as pd

class BatchReadError(Exception):
    """A landed file that cannot be read as a table (truncated, corrupt, not CSV/parquet)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot read {path}: {reason}")
        self.path = path
        self.reason = reason


def _atomic_write_parquet(df: pl.DataFrame, path: Path) -> None:
    """Write next to the target, then rename: a crash never leaves half a batch in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        df.write_parquet(tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@dataclass(frozen=True)
class Lake:
    """Paths and atomic reads/writes of the lake; `root` is the git-ignored state folder."""

    root: Path
    data_dir: Path

    @property
    def landing_dir(self) -> Path:
        return self.root / "landing"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def offline_store_dir(self) -> Path:
        return self.root / "offline_store"

    @property
    def deliveries(self) -> DeliveryLedger:
        """Every delivered file (immutable, by content hash) with its status, and the holds."""
        return DeliveryLedger(self.root / "deliveries")

    def batch_path(self, table: str, period: str | None = None) -> Path:
        base = self.root / "warehouse" / table
        return base / f"period={period}" / "data.parquet" if period else base / "data.parquet"

    def write_batch(self, table: str, df: pl.DataFrame, period: str | None = None) -> Path:
        path = self.batch_path(table, period)
        _atomic_write_parquet(df, path)
        return path

    def available_periods(self, table: str) -> list[str]:
        base = self.root / "warehouse" / table
        return sorted(p.parent.name.removeprefix("period=") for p in base.glob("period=*/data.parquet"))

    def read_batches(self, table: str, periods: list[str] | None = None) -> pl.DataFrame:
        """All validated batches of a table (or the given periods), concatenated."""
        chosen = periods if periods is not None else self.available_periods(table)
        paths = [self.batch_path(table, m) for m in chosen if self.batch_path(table, m).exists()]
        if not paths:
            raise FileNotFoundError(f"no validated {table} batches in {self.root / 'warehouse' / table}")
        return pl.concat([pl.read_parquet(p) for p in paths], how="vertical_relaxed")

    def read_reference(self, table: str) -> pl.DataFrame:
        return pl.read_parquet(self.batch_path(table))

    def quarantine(
        self, table: str, batch_name: str, report: dict, report_text: str,
        df: pl.DataFrame | None = None, source_file: Path | None = None, original_name: str | None = None,
    ) -> Path:
        """Keep a rejected batch and its report side by side; nothing is ever lost."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        folder = self.quarantine_dir / table / f"{batch_name}__{stamp}"
        folder.mkdir(parents=True, exist_ok=True)
        if source_file is not None:
            shutil.copyfile(source_file, folder / (original_name or source_file.name))
        elif df is not None:
            df.write_parquet(folder / "batch.parquet")
        (folder / "report.json").write_text(json.dumps(report, indent=2, default=str))
        (folder / "report.md").write_text(report_text)
        return folder

    def view_dir(self, view: str) -> Path:
        return self.offline_store_dir / view

    def write_view(self, view: str, df: pl.DataFrame, month_column: str) -> list[Path]:
        """Store a feature view's events as hive-partitioned parquet (one file per month of known-at time)."""
        parts = ((month, part.drop(month_column))
                 for (month,), part in df.partition_by(month_column, as_dict=True).items())
        return self.write_view_parts(view, parts)

    def write_view_parts(self, view: str, parts: Iterable[tuple[str, pl.DataFrame]]) -> list[Path]:
        """Store a view month by month (each month's events once), replacing the stored view at the end."""
        tmp_root = self.offline_store_dir / f".{view}.tmp"
        shutil.rmtree(tmp_root, ignore_errors=True)
        paths = []
        for month, part in parts:
            path = tmp_root / f"month={month}" / "data.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            part.write_parquet(path, compression="zstd")
            paths.append(self.view_dir(view) / f"month={month}" / "data.parquet")
        old = self.offline_store_dir / f".{view}.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.view_dir(view).exists():
            os.replace(self.view_dir(view), old)
        os.replace(tmp_root, self.view_dir(view))
        shutil.rmtree(old, ignore_errors=True)
        return sorted(paths)

    def read_view(self, view: str, months: list[str] | None = None) -> pl.DataFrame:
        """The view's events (in stored order); `months` (known-at months, %Y-%m) reads only those partitions."""
        path = self.view_dir(view)
        if not path.exists():
            raise FileNotFoundError(f"feature view {view!r} is not materialized ({path})")
        if months is None:
            return pl.read_parquet(path / "**" / "*.parquet", hive_partitioning=True).drop("month")
        files = [path / f"month={m}" / "data.parquet" for m in months if (path / f"month={m}" / "data.parquet").exists()]
        if not files:
            return pl.read_parquet(next(path.glob("month=*/data.parquet"))).clear()
        return pl.concat([pl.read_parquet(f) for f in files])


def training_set_dir(root: Path) -> Path:
    return root / "training_sets"


def write_training_set(lake: Lake, df: pl.DataFrame, content_hash: str) -> Path:
    """Keep every training set under its content hash, so a model names exactly the data it saw."""
    path = training_set_dir(lake.root) / f"{content_hash}.parquet"
    if not path.exists():
        _atomic_write_parquet(df, path)
    pointer = training_set_dir(lake.root) / "current.json"
    pointer.write_text(json.dumps({"hash": content_hash, "path": str(path)}))
    return path


def read_training_set(lake: Lake, content_hash: str | None = None) -> tuple[pl.DataFrame, str]:
    """The training set with the given hash, or the current one."""
    if content_hash is None:
        pointer = training_set_dir(lake.root) / "current.json"
        if not pointer.exists():
            raise FileNotFoundError(f"no training set yet ({pointer}); materialize training_set first")
        content_hash = json.loads(pointer.read_text())["hash"]
    return pl.read_parquet(training_set_dir(lake.root) / f"{content_hash}.parquet"), content_hash


def write_record(lake: Lake, name: str, record: dict) -> Path:
    """Small JSON hand-offs between assets (e.g. which MLflow run holds the candidate)."""
    path = lake.root / "records" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path)
    return path


def read_record(lake: Lake, name: str) -> dict:
    path = lake.root / "records" / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{name} has not been materialized yet ({path})")
    return json.loads(path.read_text())


EXPECTED = "__expected_prediction"


def write_canary(lake: Lake, canary: pd.DataFrame) -> Path:
    """Canary rows with the trainer's in-process predictions, for infra validation to compare with."""
    path = lake.root / "records" / "canary.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    canary.to_parquet(path)
    return path


def read_canary(lake: Lake) -> pd.DataFrame:
    import pandas as pd

    return pd.read_parquet(lake.root / "records" / "canary.parquet")
