"""Alerts: an append-only alert log in the state folder, and an optional webhook."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import httpx

from mlops_assets.settings import alert_webhook, state_dir

SEVERITIES = ("WARN", "ERROR")
_lock = threading.Lock()


def read_alerts(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class AlertSink(dg.ConfigurableResource):
    """Writes every alert to `alerts.jsonl`; posts it to `webhook_url` when one is configured."""

    path: str = str(state_dir() / "alerts" / "alerts.jsonl")
    webhook_url: str = alert_webhook()
    timeout_seconds: float = 5.0

    def send(self, severity: str, source: str, message: str, details: dict | None = None) -> dict:
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {severity!r}")
        alert = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "severity": severity,
                 "source": source, "message": message, "details": details or {}}
        if self.webhook_url:
            alert["webhook"] = self._post(alert)
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with _lock, target.open("a") as fh:
            fh.write(json.dumps(alert, default=str) + "\n")
        return alert

    def _post(self, alert: dict) -> str:
        """Deliver to the webhook; a delivery failure is recorded with the alert, never hidden."""
        try:
            response = httpx.post(self.webhook_url, json=alert, timeout=self.timeout_seconds)
        except httpx.HTTPError as exc:
            return f"failed: {type(exc).__name__}"
        return "delivered" if response.is_success else f"failed: HTTP {response.status_code}"

    def read(self) -> list[dict]:
        return read_alerts(Path(self.path))
