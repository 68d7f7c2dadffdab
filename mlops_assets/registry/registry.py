"""Registry governance over MLflow: versions with provenance tags, aliases with a full history.

Every alias move is appended to the registered model's tags (`alias_event.<n>`), so the history
lives in the registry itself, next to the versions it talks about. Champion moves form a stack:
promotions and approvals push, a rollback pops back to the previous champion.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlops_assets.serving.governance import EVENT_PREFIX, alias_events, alias_version, model_tags, not_found

CHAMPION = "champion"
CHALLENGER = "challenger"


class GovernanceError(Exception):
    """A registry action refused by policy (e.g. approving an unblessed version)."""


def ensure_model(client: MlflowClient, name: str, description: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not not_found(exc):
            raise
        client.create_registered_model(name, description=description)


def register_version(client: MlflowClient, name: str, model_uri: str, run_id: str,
                     tags: dict[str, str], description: str) -> str:
    """A new version of the project's model, tagged with where it came from and how it was judged."""
    ensure_model(client, name, description)
    version = client.create_model_version(name, model_uri, run_id=run_id, tags=tags, description=description)
    return str(version.version)


def alias_history(client: MlflowClient, name: str) -> list[dict[str, str]]:
    """All recorded alias moves, oldest first (none for a model not registered yet)."""
    return alias_events(model_tags(client, name))


def move_alias(client: MlflowClient, name: str, alias: str, version: str, action: str,
               actor: str, reason: str, run_id: str = "") -> dict[str, str]:
    """Point `alias` at `version` and append the move to the history."""
    history = alias_history(client, name)
    event = {
        "seq": str(len(history) + 1), "alias": alias, "version": str(version),
        "previous": alias_version(client, name, alias) or "", "action": action, "actor": actor,
        "reason": reason, "dagster_run_id": run_id, "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    client.set_registered_model_alias(name, alias, str(version))
    client.set_registered_model_tag(name, f"{EVENT_PREFIX}{int(event['seq']):06d}", json.dumps(event))
    return event


def champion_stack(history: list[dict[str, str]]) -> list[str]:
    """Champion versions in force, oldest at the bottom: promote/approve push, rollback pops."""
    stack: list[str] = []
    for event in history:
        if event["alias"] != CHAMPION:
            continue
        if event["action"] == "rollback":
            stack.pop()
        else:
            stack.append(event["version"])
    return stack


def assert_promotable(client: MlflowClient, name: str, version: str) -> None:
    """Only a version that passed the blessing gate and infra validation may become champion."""
    try:
        tags = client.get_model_version(name, version).tags
    except MlflowException as exc:
        if not not_found(exc):
            raise
        raise GovernanceError(f"{name} version {version} does not exist") from exc
    if tags.get("blessed") != "true":
        why = tags.get("blessing_reasons") or "no blessing verdict recorded"
        raise GovernanceError(f"{name} version {version} was not blessed ({why}); refusing to promote it")
    if tags.get("infra_valid") != "true":
        why = tags.get("infra_reasons") or "infra validation did not pass"
        raise GovernanceError(f"{name} version {version} failed infra validation ({why}); refusing to promote it")


def promote(client: MlflowClient, name: str, version: str, action: str, actor: str,
            reason: str, run_id: str = "") -> dict[str, str]:
    assert_promotable(client, name, version)
    if alias_version(client, name, CHAMPION) == str(version):
        raise GovernanceError(f"{name} version {version} is already the champion")
    return move_alias(client, name, CHAMPION, version, action, actor, reason, run_id)


def rollback(client: MlflowClient, name: str, actor: str, reason: str, run_id: str = "") -> dict[str, str]:
    """Move the champion back to the one it replaced."""
    stack = champion_stack(alias_history(client, name))
    if len(stack) < 2:
        raise GovernanceError(f"{name} has no previous champion to roll back to (history: {stack})")
    return move_alias(client, name, CHAMPION, stack[-2], "rollback", actor, reason, run_id)


def history_markdown(history: list[dict[str, str]]) -> str:
    rows = ["| # | alias | version | previous | action | actor | reason | at |", "|---|---|---|---|---|---|---|---|"]
    rows += [f"| {e['seq']} | {e['alias']} | {e['version']} | {e['previous']} | {e['action']} | {e['actor']} "
             f"| {e['reason']} | {e['at']} |" for e in history]
    return "\n".join(rows)
