"""Prometheus metrics, exposition text written here (no prometheus_client dependency).

Counters are per process: with several uvicorn workers each scrape sees one worker's numbers.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from typing import Protocol

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PREFIX = "mlops_serving"


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class LogFigures(Protocol):
    """What the prediction log exposes (the PredictionLog itself)."""

    written: int
    dropped: int
    commits: int

    @property
    def backlog(self) -> int: ...

    @property
    def degraded(self) -> bool: ...


class Metrics:
    """Request counts and latency by endpoint, errors, predictions and model versions per arm, swaps."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.predictions: dict[str, int] = defaultdict(int)
        self.model_versions: dict[tuple[str, str], int] = {}
        self.hot_swaps = 0
        self.refused_versions = 0
        self.governance_blocked = 0

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, str(status))] += 1
            self.buckets[endpoint][bisect.bisect_left(BUCKETS, seconds)] += 1
            self.latency_sum[endpoint] += seconds

    def predicted(self, arm: str, count: int = 1) -> None:
        with self._lock:
            self.predictions[arm] += count

    def model_loaded(self, arm: str, name: str, version: str, swapped: bool) -> None:
        self.model_dropped(arm)
        with self._lock:
            self.model_versions[(arm, name)] = int(version) if version.isdigit() else -1
            self.hot_swaps += int(swapped)

    def version_refused(self, blocked: bool) -> None:
        """An alias pointed at a version without a recorded blessing and infra validation."""
        with self._lock:
            self.refused_versions += 1
            self.governance_blocked = int(blocked)

    def governance_cleared(self) -> None:
        with self._lock:
            self.governance_blocked = 0

    def model_dropped(self, arm: str) -> None:
        with self._lock:
            for key in [k for k in self.model_versions if k[0] == arm]:
                del self.model_versions[key]

    def render(self, log: LogFigures) -> str:
        """The text exposition format, version 0.0.4."""
        with self._lock:
            lines = self._counters() + self._histogram() + self._gauges() + self._log(log)
        return "\n".join(lines) + "\n"

    def _counters(self) -> list[str]:
        lines = [
            f"# HELP {PREFIX}_requests_total Requests by endpoint and HTTP status.",
            f"# TYPE {PREFIX}_requests_total counter",
        ]
        lines += [
            f"{PREFIX}_requests_total{_labels(endpoint=e, status=s)} {n}"
            for (e, s), n in sorted(self.requests.items())
        ]
        lines += [
            f"# HELP {PREFIX}_errors_total Responses with a 4xx or 5xx status, by endpoint and status.",
            f"# TYPE {PREFIX}_errors_total counter",
        ]
        lines += [
            f"{PREFIX}_errors_total{_labels(endpoint=e, status=s)} {n}"
            for (e, s), n in sorted(self.requests.items())
            if int(s) >= 400
        ]
        lines += [
            f"# HELP {PREFIX}_predictions_total Scored instances by arm.",
            f"# TYPE {PREFIX}_predictions_total counter",
        ]
        lines += [
            f"{PREFIX}_predictions_total{_labels(arm=a)} {n}" for a, n in sorted(self.predictions.items())
        ]
        lines += [
            f"# HELP {PREFIX}_hot_swaps_total Models replaced while serving.",
            f"# TYPE {PREFIX}_hot_swaps_total counter",
            f"{PREFIX}_hot_swaps_total {self.hot_swaps}",
            f"# HELP {PREFIX}_ungoverned_versions_refused_total Alias moves to a version without a recorded "
            "blessing and infra validation, not served.",
            f"# TYPE {PREFIX}_ungoverned_versions_refused_total counter",
            f"{PREFIX}_ungoverned_versions_refused_total {self.refused_versions}",
            f"# HELP {PREFIX}_governance_blocked 1 while an alias points at a version the service refuses.",
            f"# TYPE {PREFIX}_governance_blocked gauge",
            f"{PREFIX}_governance_blocked {self.governance_blocked}",
        ]
        return lines

    def _histogram(self) -> list[str]:
        name = f"{PREFIX}_request_latency_seconds"
        lines = [f"# HELP {name} Request latency by endpoint.", f"# TYPE {name} histogram"]
        for endpoint, counts in sorted(self.buckets.items()):
            running = 0
            for bound, count in zip([*map(str, BUCKETS), "+Inf"], counts, strict=True):
                running += count
                lines.append(f"{name}_bucket{_labels(endpoint=endpoint, le=bound)} {running}")
            lines.append(f"{name}_sum{_labels(endpoint=endpoint)} {self.latency_sum[endpoint]:.6f}")
            lines.append(f"{name}_count{_labels(endpoint=endpoint)} {running}")
        return lines

    def _gauges(self) -> list[str]:
        lines = [
            f"# HELP {PREFIX}_model_version Registry version served per arm.",
            f"# TYPE {PREFIX}_model_version gauge",
        ]
        lines += [
            f"{PREFIX}_model_version{_labels(arm=a, model=m)} {v}"
            for (a, m), v in sorted(self.model_versions.items())
        ]
        return lines

    @staticmethod
    def _log(log: LogFigures) -> list[str]:
        figures = [
            ("queue_depth", "gauge", "Records accepted but not yet durable (queued, or held while the disk fails).",
             log.backlog),
            ("records_total", "counter", "Records written and fsynced to the prediction log.", log.written),
            ("dropped_total", "counter", "Records refused because the backlog was full (their answers said "
                                         "not-logged).", log.dropped),
            ("commits_total", "counter", "Group commits (one write + fsync each).", log.commits),
            ("degraded", "gauge", "1 while the prediction log cannot be written.", int(log.degraded)),
        ]
        lines = []
        for name, kind, text, value in figures:
            full = f"{PREFIX}_prediction_log_{name}"
            lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}", f"{full} {value}"]
        return lines
