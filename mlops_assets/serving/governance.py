"""What the service checks before it serves a registry version (it must not import the registry package,
which imports Dagster, so the registry imports these instead).

A version is governed when its blessing and its infra validation are recorded as passed on it, and
the alias's last recorded move (`alias_event.<n>` tags of the registered model, written by
`registry.move_alias`) put it there: an alias set behind the platform's back (the MLflow UI or REST
API) is not in the history and is refused.
"""

from __future__ import annotations

import json

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

EVENT_PREFIX = "alias_event."


def not_found(exc: MlflowException) -> bool:
    """A missing model (RESOURCE_DOES_NOT_EXIST) or a missing alias (INVALID_PARAMETER_VALUE '... not
    found', as MLflow 3 reports it); anything else (network, permissions, a broken store) is an error."""
    if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
        return True
    return exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in exc.message


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points at; None only when the model or the alias does not exist."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if not_found(exc):
            return None
        raise


def model_tags(client: MlflowClient, name: str) -> dict[str, str]:
    """A registered model's tags; none for a model not registered yet. A registry error is raised:
    read as 'no tags' it would make a history restart its numbering and overwrite events."""
    try:
        return dict(client.get_registered_model(name).tags)
    except MlflowException as exc:
        if not_found(exc):
            return {}
        raise


def alias_events(model_tags: dict[str, str]) -> list[dict[str, str]]:
    """The recorded alias moves in a registered model's tags, oldest first."""
    events = [json.loads(v) for k, v in model_tags.items() if k.startswith(EVENT_PREFIX)]
    return sorted(events, key=lambda e: int(e["seq"]))


def ungoverned(client: MlflowClient, name: str, alias: str, version: str) -> str | None:
    """Why `version` must not be served under `alias` (None: it may)."""
    tags = client.get_model_version(name, version).tags
    if tags.get("blessed") != "true":
        return f"{name} v{version} has no recorded blessing ({tags.get('blessing_reasons') or 'no verdict'})"
    if tags.get("infra_valid") != "true":
        return f"{name} v{version} has not passed infra validation ({tags.get('infra_reasons') or 'not run'})"
    moves = [e for e in alias_events(client.get_registered_model(name).tags) if e.get("alias") == alias]
    if not moves or moves[-1].get("version") != version:
        return f"the move of {alias} to {name} v{version} is not in the alias history (set outside the platform)"
    return None
