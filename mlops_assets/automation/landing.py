"""From landed files to runs: the inbox becomes deliveries, pending deliveries become run requests.

No Dagster here. An upstream system may drop `<period>.csv|parquet` files into
`landing/<source>/`; each is recorded as a delivery (bytes kept under their hash) and removed
from the inbox, so a bad file never lingers to break later landings. A file the platform cannot
place (wrong name, unknown source folder, a period outside the calendar) becomes a rejected
delivery with its reason, never an exception that stops the others.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlops_assets.ingestion.deliveries import SUFFIXES, Delivery, DeliveryLedger

PERIOD_FILE = re.compile(r"^(?P<period>\d{4}-\d{2}(-\d{2})?)$")


@dataclass(frozen=True)
class PeriodRun:
    """One run for the pending deliveries of one period (several sources of a period go together)."""

    period: str
    partition_key: str
    deliveries: tuple[Delivery, ...]

    @property
    def run_key(self) -> str:
        return "deliveries-" + "-".join(f"{d.name}.{d.attempts}" for d in self.deliveries)

    @property
    def sources(self) -> list[str]:
        return sorted({d.source for d in self.deliveries})


def collect_inbox(landing_dir: Path, ledger: DeliveryLedger, sources: tuple[str, ...]) -> list[Delivery]:
    """Record every file in the inbox as a delivery, oldest first, and take it out of the inbox."""
    found = []
    if not landing_dir.exists():
        return found
    for path in sorted((p for p in landing_dir.glob("*/*") if p.is_file() and not p.name.startswith(".")),
                       key=lambda p: p.stat().st_mtime):
        source = path.parent.name
        match = PERIOD_FILE.match(path.stem)
        delivery = ledger.add(path, source, match["period"] if match else path.stem, landed_by="landing folder")
        if source not in sources:
            ledger.mark_rejected(delivery.id, "", f"landing/{source}/ is no periodic source of the project "
                                 f"(periodic sources: {', '.join(sources)})", "")
        elif not match or path.suffix.lower() not in SUFFIXES:
            ledger.mark_rejected(delivery.id, "", f"file name {path.name!r} is not <period>.csv or <period>.parquet "
                                 "(e.g. 2013-05.csv)", "")
        found.append(ledger.get(delivery.id))
        path.unlink()
    return found


def plan_runs(pending: list[Delivery], partition_key: Callable[[str], str]) -> tuple[list[PeriodRun], list[tuple[Delivery, str]]]:
    """Group pending deliveries by period; a period that names no partition is refused on its own.

    `partition_key` maps a period label to its key and raises ValueError with the reason otherwise.
    When a source has several pending deliveries for one period, the oldest goes in this run and the
    newer ones in later runs, so each is ingested (and superseded) in the order it landed.
    """
    runs: list[PeriodRun] = []
    refused: list[tuple[Delivery, str]] = []
    by_period: dict[str, list[Delivery]] = {}
    for delivery in pending:
        try:
            key = partition_key(delivery.period)
        except ValueError as exc:
            refused.append((delivery, str(exc)))
            continue
        by_period.setdefault(key, []).append(delivery)
    for key, deliveries in sorted(by_period.items()):
        first_per_source: dict[str, Delivery] = {}
        for delivery in deliveries:
            first_per_source.setdefault(delivery.source, delivery)
        runs.append(PeriodRun(deliveries[0].period, key, tuple(sorted(first_per_source.values(), key=lambda d: d.id))))
    return runs, refused
