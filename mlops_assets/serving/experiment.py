"""Online experiments: which arm answers a request, decided by a stable hash of a key.

`ab` and `canary` are one mechanism (canary = a small `challenger_share`): the same key always
lands in the same arm, so a plane (by default) sees one model for the whole experiment. `shadow`
always answers with the champion and scores the challenger on the side.
"""

from __future__ import annotations

import hashlib

from mlops_assets.serving.schemas import FlightRequest

SPLIT_MODES = frozenset({"ab", "canary"})


def bucket(key: str, salt: str = "") -> float:
    """A uniform number in [0, 1) fixed by the key (blake2b, not Python's per-process hash)."""
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_key(flight: FlightRequest, request_id: str, key: str) -> str:
    """The configured attribute of the flight; the request id when it is absent (no tail number)."""
    if key == "request_id":
        return request_id
    value = getattr(flight, key)
    return request_id if value is None else str(value)


def choose_arm(mode: str, share: float, key: str, salt: str, has_challenger: bool) -> str:
    """'challenger' for the configured share of keys in ab/canary mode (if one is loaded), else 'champion'."""
    if mode in SPLIT_MODES and has_challenger and bucket(key, salt) < share:
        return "challenger"
    return "champion"
