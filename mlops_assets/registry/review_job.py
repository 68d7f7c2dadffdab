"""The `request_changes` governance job: a reviewer blocks a version's promotion, with a reason.

The counterpart of `approve_model`; the rules live in `registry.review`. The request is recorded
on the version, in the model's review history and the alert log, and observed on `champion_model`
so the asset's history in the UI shows it next to the alias moves.
"""

from collections.abc import Iterator

import dagster as dg

from mlops_assets.alerts import AlertSink
from mlops_assets.registry import registry, review
from mlops_assets.resources import ProjectResource
from mlops_assets.tracking import MlflowResource


class ReviewConfig(dg.Config):
    version: str
    reason: str
    reviewer: str


def _review_markdown(events: list[dict[str, str]]) -> str:
    rows = ["| # | version | action | reviewer | reason | at |", "|---|---|---|---|---|---|"]
    rows += [f"| {e['seq']} | {e['version']} | {e['action']} | {e['reviewer']} | {e['reason']} | {e['at']} |"
             for e in events]
    return "\n".join(rows)


@dg.op
def request_version_changes(context: dg.OpExecutionContext, config: ReviewConfig, project: ProjectResource,
                            mlflow_tracking: MlflowResource,
                            alerts: AlertSink) -> Iterator[dg.AssetObservation | dg.Output]:
    """Record the request; from then on the version cannot become champion (a new version answers it)."""
    name, client = project.get().spec.model_name, mlflow_tracking.client()
    try:
        event = review.request_changes(client, name, config.version, config.reason, config.reviewer,
                                       context.run.run_id)
    except registry.GovernanceError as exc:
        raise dg.Failure(description=str(exc)) from exc
    champion = registry.alias_version(client, name, registry.CHAMPION)
    outcome = f"changes requested on {name} version {config.version} by {config.reviewer}: {config.reason}"
    if champion == str(config.version):
        outcome += "; it is the champion and stays so until another version is promoted or rollback_champion runs"
    alerts.send("WARN", "review:request_changes", outcome, {"version": str(config.version),
                                                             "reviewer": config.reviewer})
    context.log.info(outcome)
    yield dg.AssetObservation(asset_key="champion_model", metadata={
        "outcome": outcome, "version": str(config.version), "reviewer": config.reviewer, "reason": config.reason,
        "review_history": dg.MetadataValue.md(_review_markdown(review.review_history(client, name))),
        "registry": dg.MetadataValue.url(mlflow_tracking.model_url(name, config.version)),
    })
    yield dg.Output(event)


@dg.job(description="Request changes on a registered version: it cannot be promoted; a new version answers.")
def request_changes() -> None:
    request_version_changes()
