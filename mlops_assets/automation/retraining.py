"""When monitors call for retraining: new drift/performance alerts, at most once per cool-down."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

RETRAIN_SOURCES = ("monitor:drift_report", "monitor:model_performance")
RANK = {"WARN": 1, "ERROR": 2}


@dataclass(frozen=True)
class RetrainState:
    seen_until: str = ""
    last_trigger: str = ""


@dataclass(frozen=True)
class Decision:
    retrain: bool
    reason: str
    state: RetrainState
    alerts: tuple[dict, ...] = ()


def decide(alerts: list[dict], state: RetrainState, now: datetime, min_severity: str,
           cooldown: timedelta) -> Decision:
    """Alerts newer than the cursor trigger one run; during the cool-down they are consumed, not queued."""
    fresh = tuple(a for a in alerts if a["source"] in RETRAIN_SOURCES and a["at"] > state.seen_until
                  and RANK[a["severity"]] >= RANK[min_severity])
    if not fresh:
        return Decision(False, "no new drift or performance alert", state)
    seen = max(a["at"] for a in fresh)
    if state.last_trigger and now - datetime.fromisoformat(state.last_trigger) < cooldown:
        until = datetime.fromisoformat(state.last_trigger) + cooldown
        return Decision(False, f"{len(fresh)} alert(s) during the cool-down (until {until.isoformat()})",
                        RetrainState(seen, state.last_trigger), fresh)
    reason = "; ".join(a["message"] for a in fresh)
    return Decision(True, reason, RetrainState(seen, now.isoformat(timespec="seconds")), fresh)
