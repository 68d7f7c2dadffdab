"""`mlops-assets land | deliveries | ingest | retry | discard`: deliveries from the command line.

`land` checks every argument before a byte is copied, then records the file as a pending
delivery; the landing sensor (daemon or `dagster dev`) ingests it, or `ingest` does it now, in
this process, with the same run the sensor would start.
"""

from __future__ import annotations

from pathlib import Path

from mlops_assets.ingestion.deliveries import Delivery, parse_delivery_id
from mlops_assets.settings import DATA_DIR, state_dir


def _lake():
    from mlops_assets.lake import Lake

    return Lake(state_dir(), DATA_DIR)


def _project():
    from mlops_assets.project.loading import load_project
    from mlops_assets.settings import project_path

    return load_project(project_path())


def land(path: Path, table: str, period: str) -> int:
    """Check source, period and file first; a refused landing changes nothing."""
    from mlops_assets.ingestion.intake import check_landing

    check_landing(_project().spec, path, table, period)
    delivery = _lake().deliveries.add(path, table, period, landed_by="mlops-assets land")
    print(f"landed {delivery.describe()}: pending. The landing sensor ingests it under the daemon or "
          f"`make ui`; `mlops-assets ingest {delivery.name}` ingests it now.")
    return 0


def deliveries(source: str | None) -> int:
    """Every delivery with its status, then the open holds."""
    lake = _lake()
    rows = lake.deliveries.all(source)
    print(f"{'id':8} {'source':10} {'period':10} {'status':10} {'size':>11}  sha256        landed at                  "
          "file / reason")
    for d in rows:
        note = d.original_name + (f": {d.reason[:100]}" if d.reason else "")
        print(f"{d.name:8} {d.source:10} {d.period:10} {d.status:10} {d.size:>11,}  {d.sha256[:12]}  "
              f"{d.landed_at:25}  {note}")
    if not rows:
        print("(no deliveries yet: `mlops-assets land FILE --table SOURCE --period P`)")
    for hold in lake.deliveries.open_holds():
        print(f"HOLD {hold.source} {hold.period}: {hold.reason[:200]} (challengers wait for approve_model)")
    return 0


def retry(ids: list[str]) -> int:
    """Make failed, rejected or superseded deliveries pending again: a new attempt gets a new run key."""
    ledger = _lake().deliveries
    for text in ids:
        delivery = ledger.retry(parse_delivery_id(text))
        print(f"{delivery.describe()}: pending again (attempt {delivery.attempts + 1}). The landing sensor ingests "
              f"it, or `mlops-assets ingest {delivery.name}` now.")
    return 0


def ingest(ids: list[str]) -> int:
    """Ingest pending deliveries of one period now, with the run the landing sensor would start."""
    from dagster import DagsterInstance

    from mlops_assets.automation.landing import PeriodRun
    from mlops_assets.automation.sensors import landing_request
    from mlops_assets.cli import ensure_dagster_home
    from mlops_assets.definitions import after_ingestion, build_definitions
    from mlops_assets.ingestion.intake import calendar_key

    ledger, spec = _lake().deliveries, _project().spec
    chosen = [ledger.get(parse_delivery_id(i)) for i in ids]
    if any(d.status != "pending" for d in chosen):
        raise ValueError("only pending deliveries are ingested: "
                         + ", ".join(f"{d.name} is {d.status}" for d in chosen if d.status != "pending")
                         + " (`mlops-assets retry ID` makes one pending again)")
    periods = {d.period for d in chosen}
    if len(periods) != 1:
        raise ValueError(f"deliveries of several periods ({', '.join(sorted(periods))}): ingest one period at a time")
    run = PeriodRun(chosen[0].period, calendar_key(spec, chosen[0].period), tuple(chosen))
    ensure_dagster_home()
    defs = build_definitions()
    request = landing_request(run, after_ingestion(list(defs.assets or []), spec))
    result = defs.resolve_job_def("landed_period_job").execute_in_process(
        instance=DagsterInstance.get(), partition_key=run.partition_key, asset_selection=request.asset_selection,
        tags={**request.tags, "dagster/run_key": str(request.run_key)}, raise_on_error=False)
    for delivery in chosen:
        print(outcome_line(ledger.get(delivery.id)))
    print(f"landed_period_job {run.period}: {'succeeded' if result.success else 'failed'} (run {result.run_id})")
    return 0 if result.success else 1


def outcome_line(delivery: Delivery) -> str:
    where = f"; kept in {delivery.quarantine}" if delivery.quarantine and delivery.status == "rejected" else ""
    why = f": {delivery.reason}" if delivery.reason else ""
    return f"{delivery.describe()}: {delivery.status}{why}{where}"


def discard(delivery_id: str, reason: str) -> int:
    delivery = _lake().deliveries.discard(parse_delivery_id(delivery_id), reason)
    print(f"{delivery.describe()}: discarded (bytes kept in {delivery.blob})")
    return 0
