"""Every delivery case through a real ingestion run of flights 2013-11: outcome and message, as a table.

Ingests 2013-01..10 into a temporary state folder, lands each case as 2013-11, runs
`landed_period_job` cut to ingestion, and tries `mlops-assets land` with bad arguments. Prints the
table and whether every case ended as expected (rejected, held for approval, ingested, refused).
Run: .venv/bin/python benchmarks/delivery_outcomes.py  (about a minute)
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(tempfile.mkdtemp())
os.environ["MLOPS_STATE_DIR"] = str(ROOT / "state")

import dagster as dg  # noqa: E402  (the state folder is chosen before the platform reads its settings)
import polars as pl  # noqa: E402

from mlops_assets.alerts import AlertSink  # noqa: E402
from mlops_assets.cli import main  # noqa: E402
from mlops_assets.definitions import build_definitions  # noqa: E402
from mlops_assets.ingestion.deliveries import DELIVERY_TAG  # noqa: E402
from mlops_assets.resources import LakeResource, ProjectResource  # noqa: E402
from mlops_assets.settings import DATA_DIR, PROJECTS_DIR  # noqa: E402

PROJECT = PROJECTS_DIR / "flights" / "project.yaml"
NOVEMBER = pl.scan_parquet(DATA_DIR / "flights.parquet").filter(pl.col("month") == 11).collect()


def as_csv(frame: pl.DataFrame, path: Path) -> None:
    frame.with_columns(pl.col("time_hour").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).write_csv(path, null_value="NA")


def cut(path: Path, drop: int) -> None:
    path.write_bytes(path.read_bytes()[:-drop])


LOCAL_AS_UTC = pl.col("time_hour").dt.convert_time_zone("America/New_York").dt.replace_time_zone(None)
CASES: list[tuple[str, str, str, Callable[[Path], None]]] = [
    ("good November", ".parquet", "ingested", NOVEMBER.write_parquet),
    ("columns in another order (CSV)", ".csv", "ingested", lambda p: as_csv(NOVEMBER.select(NOVEMBER.columns[::-1]), p)),
    ("dep_delay 100 % null", ".parquet", "rejected",
     lambda p: NOVEMBER.with_columns(pl.lit(None, pl.Float64).alias("dep_delay")).write_parquet(p)),
    ("text in dep_delay", ".csv", "rejected",
     lambda p: as_csv(NOVEMBER.with_columns(pl.col("dep_delay").cast(pl.String).str.replace("^-1$", "late")), p)),
    ("UTF-16 CSV", ".csv", "rejected", lambda p: p.write_text("year,month\n2013,11\n", encoding="utf-16")),
    ("semicolon-delimited", ".csv", "rejected", lambda p: p.write_text("year;month\n2013;11\n")),
    ("truncated CSV", ".csv", "rejected", lambda p: (as_csv(NOVEMBER.head(1000), p), cut(p, 30))),
    ("truncated parquet", ".parquet", "rejected", lambda p: (NOVEMBER.write_parquet(p), cut(p, 100))),
    ("0-byte parquet", ".parquet", "rejected", lambda p: p.write_bytes(b"")),
    ("missing column", ".parquet", "rejected", lambda p: NOVEMBER.drop("carrier").write_parquet(p)),
    ("storm: delays +45 min", ".parquet", "held",
     lambda p: NOVEMBER.with_columns(pl.col("dep_delay") + 45, pl.col("arr_delay") + 45).write_parquet(p)),
    ("distances in km", ".parquet", "rejected",
     lambda p: NOVEMBER.with_columns(pl.col("distance") * 1.609344).write_parquet(p)),
    ("distances in km, long routes dropped", ".parquet", "held",
     lambda p: NOVEMBER.filter(pl.col("distance") < 3000).with_columns(pl.col("distance") * 1.609344).write_parquet(p)),
    ("days 1-10 only", ".parquet", "held", lambda p: NOVEMBER.filter(pl.col("day") <= 10).write_parquet(p)),
    ("time_hour shifted a month", ".parquet", "rejected",
     lambda p: NOVEMBER.with_columns(pl.col("time_hour").dt.offset_by("1mo")).write_parquet(p)),
    ("local time read as UTC", ".parquet", "held",
     lambda p: NOVEMBER.with_columns(LOCAL_AS_UTC.dt.replace_time_zone("UTC").alias("time_hour")).write_parquet(p)),
]
BAD_ARGUMENTS = [["--period", "2013-13"], ["--period", "nov"], ["--period", "2013-11/../../x"],
                 ["--period", "2012-12"], ["--period", "2099-01"]]


def land_cli(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["land", *args])
    return code, err.getvalue().strip().replace(str(ROOT), "…")


def main_table() -> None:
    resources = {"lake": LakeResource(state_dir=str(ROOT / "state")), "project": ProjectResource(path=str(PROJECT)),
                 "alerts": AlertSink(path=str(ROOT / "alerts.jsonl"), webhook_url="")}
    defs, lake, instance = build_definitions(PROJECT, resources), resources["lake"].get(), dg.DagsterInstance.ephemeral()
    history = {"dagster/asset_partition_range_start": "2013-01-01", "dagster/asset_partition_range_end": "2013-10-01"}
    assert defs.resolve_job_def("ingestion_job").execute_in_process(
        instance=instance, tags=history, asset_selection=[dg.AssetKey("flights")], raise_on_error=False).success
    folder = ROOT / "deliveries"
    folder.mkdir()
    rows, expected_met = ["| input | outcome | message |", "|---|---|---|"], 0
    for index, (name, suffix, expected, write) in enumerate(CASES):
        path = folder / f"{index:02d}{suffix}"
        write(path)
        delivery = lake.deliveries.add(path, "flights", "2013-11", "benchmark")
        defs.resolve_job_def("landed_period_job").execute_in_process(
            instance=instance, partition_key="2013-11-01", tags={DELIVERY_TAG: str(delivery.id)},
            asset_selection=[dg.AssetKey("flights")], raise_on_error=False)
        done = lake.deliveries.get(delivery.id)
        holds = [h for h in lake.deliveries.open_holds() if h.delivery_id == delivery.id]
        outcome = "held" if holds else done.status
        expected_met += outcome == expected
        message = holds[0].reason if holds else (done.reason or "ok")
        rows.append(f"| {name} | {done.status}{' + HELD for approval' if holds else ''} | {message[:230]} |")
    good = folder / "00.parquet"
    for args in BAD_ARGUMENTS:
        code, message = land_cli([str(good), "--table", "flights", *args])
        expected_met += code == 2
        rows.append(f"| land {' '.join(args)} | exit {code}, nothing written | {message[:200]} |")
    for bad in (folder / "missing.csv", folder):
        code, message = land_cli([str(bad), "--table", "flights", "--period", "2013-11"])
        expected_met += code == 2
        rows.append(f"| land {bad.name} | exit {code}, current delivery kept | {message[:200]} |")
    total = len(CASES) + len(BAD_ARGUMENTS) + 2
    print("\n".join(rows))
    print(f"\n{expected_met} of {total} cases ended as expected -> goal {'met' if expected_met == total else 'not met'}")


if __name__ == "__main__":
    main_table()
