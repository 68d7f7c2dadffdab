"""Governance jobs: approve a version (manual policy) and roll the champion back.

Each records who and why in the registry's alias history and reports a new materialization
of `champion_model`, so the asset's history in the UI shows every alias move.
"""

from collections.abc import Iterator

import dagster as dg

from mlops_assets.registry import registry, review
from mlops_assets.registry.assets import HELD_TAG
from mlops_assets.resources import LakeResource, ProjectResource
from mlops_assets.tracking import MlflowResource


class ApprovalConfig(dg.Config):
    version: str
    reason: str
    approver: str


class RollbackConfig(dg.Config):
    reason: str
    requested_by: str


def _report(client, name: str, event: dict[str, str], tracking: MlflowResource) -> dg.AssetMaterialization:
    return dg.AssetMaterialization(asset_key="champion_model", metadata={
        "outcome": f"{event['action']}: champion {event['previous'] or 'none'} -> {event['version']}",
        "champion_version": event["version"], "actor": event["actor"], "reason": event["reason"],
        "alias_history": dg.MetadataValue.md(registry.history_markdown(registry.alias_history(client, name))),
    })


@dg.op
def approve_version(context: dg.OpExecutionContext, config: ApprovalConfig, project: ProjectResource,
                    mlflow_tracking: MlflowResource, lake: LakeResource) -> Iterator[dg.AssetMaterialization | dg.Output]:
    """Make a blessed, infra-validated version the champion; anything else is refused.

    Approving a version held for shifted data releases those holds: a person has looked at it.
    """
    name, client = project.get().spec.model_name, mlflow_tracking.client()
    try:
        review.assert_no_changes_requested(client, name, config.version)
        event = registry.promote(client, name, config.version, "approve", config.approver, config.reason,
                                 context.run.run_id)
    except registry.GovernanceError as exc:
        raise dg.Failure(description=str(exc)) from exc
    held = client.get_model_version(name, config.version).tags.get(HELD_TAG, "")
    lake.get().deliveries.release_holds([int(h) for h in held.split(",") if h], f"approved by {config.approver}")
    yield _report(client, name, event, mlflow_tracking)
    yield dg.Output(event)


@dg.op
def rollback_to_previous(context: dg.OpExecutionContext, config: RollbackConfig, project: ProjectResource,
                         mlflow_tracking: MlflowResource) -> Iterator[dg.AssetMaterialization | dg.Output]:
    """Move `champion` back to the version it replaced (unless a reviewer has asked changes for that one)."""
    name, client = project.get().spec.model_name, mlflow_tracking.client()
    try:
        review.assert_rollback_allowed(client, name)
        event = registry.rollback(client, name, config.requested_by, config.reason, context.run.run_id)
    except registry.GovernanceError as exc:
        raise dg.Failure(description=str(exc)) from exc
    yield _report(client, name, event, mlflow_tracking)
    yield dg.Output(event)


@dg.job(description="Approve a registered version as champion (manual promotion policy).")
def approve_model() -> None:
    approve_version()


@dg.job(description="Move the champion alias back to the previous champion.")
def rollback_champion() -> None:
    rollback_to_previous()
