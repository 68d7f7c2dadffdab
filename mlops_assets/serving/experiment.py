"""Online experiments: which arm answers a request, decided by a stable hash of a key.

`ab` and `canary` are one mechanism (canary = a small `challenger_share`): the same key always
lands in the same arm, so an entity (by default the first view key) sees one model for the whole
experiment. `shadow` always answers with the champion and scores the challenger on the side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from mlops_assets.project.spec import Project

SPLIT_MODES = frozenset({"ab", "canary"})


def bucket(key: str, salt: str = "") -> float:
    """A uniform number in [0, 1) fixed by the key (blake2b, not Python's per-process hash)."""
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def resolve_split_key(configured: str | None, project: Project) -> str:
    """The configured request field (or 'request_id'); by default the first key of the first view."""
    if configured is None:
        views = project.used_views
        keys = project.entities[project.feature_views[views[0]].entity] if views else []
        return keys[0] if keys else "request_id"
    if configured != "request_id" and configured not in project.request.fields:
        raise ValueError(f"split_key {configured[:40]!r} is not a request field; use one of "
                         f"{sorted(project.request.fields)} or 'request_id'")
    return configured


def split_key(request: Mapping[str, object], request_id: str, key: str) -> str:
    """The request's value of the split field; the request id when it is absent."""
    if key == "request_id":
        return request_id
    value = request.get(key)
    return request_id if value is None else str(value)


def choose_arm(mode: str, share: float, key: str, salt: str, has_challenger: bool) -> str:
    """'challenger' for the configured share of keys in ab/canary mode (if one is loaded), else 'champion'."""
    if mode in SPLIT_MODES and has_challenger and bucket(key, salt) < share:
        return "challenger"
    return "champion"
