"""Rollout steps in the registry: the challenger's traffic share is a registered-model tag the service
reads, and every step is an alias move in the registry's own history, with who and why."""

from __future__ import annotations

from mlflow import MlflowClient

from mlops_assets.contract import ROLLOUT_SHARE_TAG
from mlops_assets.registry import registry, review
from mlops_assets.rollout.policy import Step
from mlops_assets.serving.governance import model_tags

SHARE_TAG = ROLLOUT_SHARE_TAG
ACTOR = "rollout controller"


def current_share(client: MlflowClient, name: str) -> float | None:
    """The challenger's share while a rollout runs, else None."""
    value = model_tags(client, name).get(SHARE_TAG, "")
    return float(value) if value else None


def start_rollout(client: MlflowClient, name: str, version: str, share: float, run_id: str = "") -> dict[str, str]:
    """A blessed, infra-validated version begins as challenger on the first share of traffic."""
    registry.assert_promotable(client, name, version)
    client.set_registered_model_tag(name, SHARE_TAG, f"{share:g}")
    return registry.move_alias(client, name, registry.CHALLENGER, version, "rollout_start", ACTOR,
                               f"challenger on {share:.0%} of traffic", run_id)


def apply_step(client: MlflowClient, name: str, version: str, step: Step, run_id: str = "") -> dict[str, str] | None:
    """Record the step: a widened or withdrawn share, or the promotion; a hold changes nothing."""
    if step.action == "hold":
        return None
    if step.action == "promote":
        review.assert_no_changes_requested(client, name, version)
        event = registry.promote(client, name, version, "rollout_promote", ACTOR, step.reason, run_id)
        client.set_registered_model_tag(name, SHARE_TAG, "")
        return event
    client.set_registered_model_tag(name, SHARE_TAG, f"{step.share:g}")
    return registry.move_alias(client, name, registry.CHALLENGER, version, f"rollout_{step.action}", ACTOR,
                               step.reason, run_id)
