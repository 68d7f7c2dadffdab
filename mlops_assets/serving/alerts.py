"""Alerts raised by the service, in the platform's alert log format (`alerts.jsonl` + optional webhook).

The platform's `AlertSink` is a Dagster resource, which serving must not import; this writes the same
records. Each alert is delivered on a thread of its own, so neither a request nor the prediction log
writer waits for a slow webhook or a full disk; an undeliverable alert is logged, never raised.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx

log = logging.getLogger(__name__)
SOURCE = "serving"


class ServingAlerts:
    """Appends to `path` and posts to `webhook` (when set); `sent` keeps this process's alerts for /health."""

    def __init__(self, path: Path, webhook: str = "", timeout_seconds: float = 5.0) -> None:
        self.path, self.webhook, self.timeout_seconds = path, webhook, timeout_seconds
        self.sent: list[dict[str, object]] = []
        self._lock = threading.Lock()

    def send(self, severity: str, message: str, details: dict[str, object] | None = None) -> None:
        alert = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "severity": severity, "source": SOURCE,
                 "message": message, "details": details or {}}
        log.log(logging.ERROR if severity == "ERROR" else logging.WARNING, "alert: %s", message)
        with self._lock:
            self.sent.append(alert)
        threading.Thread(target=self._deliver, args=(alert,), name="serving-alert", daemon=True).start()

    def _deliver(self, alert: dict[str, object]) -> None:
        if self.webhook:
            try:
                response = httpx.post(self.webhook, json=alert, timeout=self.timeout_seconds)
                alert["webhook"] = "delivered" if response.is_success else f"failed: HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                alert["webhook"] = f"failed: {type(exc).__name__}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock, self.path.open("a") as handle:
                handle.write(json.dumps(alert, default=str) + "\n")
        except OSError as exc:
            log.error("alert not written to %s (%s): %s", self.path, exc, alert["message"])
