"""Which landed files are new: identity by content, so a file is never ingested twice."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from mlops_assets.lake import LANDING_SUFFIXES

PERIOD_FILE = re.compile(r"^(?P<month>\d{4}-\d{2}(-\d{2})?)$")


@dataclass(frozen=True)
class LandedFile:
    table: str
    month: str
    path: Path
    identity: str


def file_identity(table: str, path: Path) -> str:
    """Table, month and content hash: the same bytes landed twice are the same delivery."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:20]
    return f"{table}/{path.stem}/{digest}"


def landed_files(landing_dir: Path, tables: tuple[str, ...]) -> list[LandedFile]:
    """Files named `<YYYY-MM>[-DD].csv|parquet` under `landing/<table>/`, oldest first."""
    found = []
    for table in tables:
        for path in sorted((landing_dir / table).glob("*"), key=lambda p: p.stat().st_mtime):
            match = PERIOD_FILE.match(path.stem)
            if path.suffix in LANDING_SUFFIXES and match:
                found.append(LandedFile(table, match["month"], path, file_identity(table, path)))
    return found


def new_files(files: list[LandedFile], seen: set[str]) -> list[LandedFile]:
    return [f for f in files if f.identity not in seen]
