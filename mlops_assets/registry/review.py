"""Review with "request changes" (Practitioners Guide 3.7.2.2, the "check" step): a reviewer's objection
to a registered version, with a reason, that blocks its promotion.

Approval already exists (`approve_model`); this is its counterpart. A request is recorded on the
version itself (tags `changes_requested`, `.reason`, `.reviewer`, `.at`) and appended to the
registered model's review history (`review_event.<n>` tags, next to the alias history). A version's
artifact never changes, so the request blocks *that* version for good: neither `approve_model`, nor
the automatic promotion in `champion_model`, nor `rollback_champion` (when it is the previous
champion) can make it champion. A new version (retrained on new
data or a new project file) answers the review: it is not blocked, and the governance report names
the first later version promoted after the request as the answer.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlops_assets.registry.registry import CHAMPION, GovernanceError, alias_history, champion_stack
from mlops_assets.serving.governance import not_found

REQUESTED = "changes_requested"
REASON, REVIEWER, AT, RUN = (f"{REQUESTED}.{k}" for k in ("reason", "reviewer", "at", "dagster_run_id"))
REVIEW_PREFIX = "review_event."


def _version_tags(client: MlflowClient, name: str, version: str) -> dict[str, str]:
    """The version's tags; an unknown version is a one-line error that lists the registered ones."""
    try:
        return client.get_model_version(name, version).tags
    except MlflowException as exc:
        if not not_found(exc):
            raise
        try:
            known = sorted((str(v.version) for v in client.search_model_versions(f"name='{name}'")), key=int)
        except MlflowException:
            known = []
        raise GovernanceError(f"{name} has no version {version!r} (registered versions: "
                              f"{', '.join(known) or 'none'})") from exc


def review_history(client: MlflowClient, name: str) -> list[dict[str, str]]:
    """Every recorded review event of the model, oldest first (none for an unregistered model)."""
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as exc:
        if not_found(exc):
            return []
        raise
    return review_events(tags)


def review_events(model_tags: dict[str, str]) -> list[dict[str, str]]:
    events = [json.loads(v) for k, v in model_tags.items() if k.startswith(REVIEW_PREFIX)]
    return sorted(events, key=lambda e: int(e["seq"]))


def requested_changes(tags: dict[str, str]) -> dict[str, str] | None:
    """The open request recorded on a version's tags (None: nothing blocks it)."""
    if tags.get(REQUESTED) != "true":
        return None
    return {"reason": tags.get(REASON, ""), "reviewer": tags.get(REVIEWER, ""), "at": tags.get(AT, "")}


def request_changes(client: MlflowClient, name: str, version: str, reason: str, reviewer: str,
                    run_id: str = "") -> dict[str, str]:
    """Record a reviewer's request for changes on `version`; from now on it cannot be promoted."""
    if not reason.strip() or not reviewer.strip():
        raise GovernanceError("request_changes needs a non-empty reason and reviewer: say who asks for what")
    _version_tags(client, name, str(version))
    history = review_history(client, name)
    event = {"seq": str(len(history) + 1), "action": "request_changes", "version": str(version),
             "reviewer": reviewer, "reason": reason, "dagster_run_id": run_id,
             "at": datetime.now(UTC).isoformat(timespec="seconds")}
    for key, value in ((REASON, reason), (REVIEWER, reviewer), (AT, event["at"]), (RUN, run_id), (REQUESTED, "true")):
        client.set_model_version_tag(name, str(version), key, value)
    client.set_registered_model_tag(name, f"{REVIEW_PREFIX}{int(event['seq']):06d}", json.dumps(event))
    return event


def assert_no_changes_requested(client: MlflowClient, name: str, version: str,
                                answer: str = "refusing to promote it: a new version must answer the review") -> None:
    """Refuse to promote a version a reviewer asked changes for; the reason is in the error."""
    request = requested_changes(_version_tags(client, name, str(version)))
    if request is not None:
        raise GovernanceError(f"{name} version {version} has changes requested by {request['reviewer']} "
                              f"({request['at']}): {request['reason']}; {answer}")


def assert_rollback_allowed(client: MlflowClient, name: str) -> None:
    """A rollback makes the previous champion champion again: not one a reviewer has since asked changes
    for (the error says to approve another version instead). No previous champion is the rollback's own
    error."""
    stack = champion_stack(alias_history(client, name))
    if len(stack) >= 2:
        assert_no_changes_requested(client, name, stack[-2], "refusing to roll back to it: approve another "
                                    "version (approve_model) instead")


def answered_by(request_version: str, requested_at: str, history: list[dict[str, str]]) -> str | None:
    """The first later version made champion after the request (the one that answered it), if any."""
    for event in history:
        if (event["alias"] == CHAMPION and event["action"] != "rollback" and event["at"] >= requested_at
                and int(event["version"]) > int(request_version)):
            return event["version"]
    return None
