"""Prometheus metrics of the service (prometheus_client), for the whole fleet of workers.

The launcher (`python -m mlops_assets.serving`) sets PROMETHEUS_MULTIPROC_DIR to a fresh folder before
the workers start: every worker writes its samples there (memory-mapped files per pid) and /metrics,
in whichever worker answers the scrape, adds up all of them (MultiProcessCollector). Without it (the
app built in-process, as tests and replay do) each Metrics has its own registry.

Figures another object owns (the prediction log's counts, the process's memory, CPU and descriptors)
are published when /metrics is scraped and every SAMPLE_SECONDS by a thread, so another worker's
figures in a scrape are at most that old.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import prometheus_client
import psutil
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

PASS_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PREFIX = "mlops_serving"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
SAMPLE_SECONDS = 5.0
LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")

STAGES = ("parse", "lookup", "predict", "answer", "log", "encode", "log_wait")

prometheus_client.disable_created_metrics()  # no *_created series: they exist only without multiprocess mode


class LogFigures(Protocol):
    """What the prediction log exposes (the PredictionLog itself)."""

    written: int
    dropped: int
    commits: int

    @property
    def backlog(self) -> int: ...

    @property
    def degraded(self) -> bool: ...


def multiprocess_dir() -> Path | None:
    """The shared metrics folder of a multi-worker launch, or None (one process, its own registry)."""
    folder = os.environ.get(MULTIPROCESS_ENV, "")
    if not folder:
        return None
    if values.ValueClass.__name__ != "MmapedValue":
        raise RuntimeError(f"{MULTIPROCESS_ENV} was set after prometheus_client was imported; set it before the "
                           "process starts")
    if not Path(folder).is_dir():
        raise RuntimeError(f"{MULTIPROCESS_ENV}={folder} is not a folder")
    return Path(folder)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class Metrics:
    """Requests, latency and errors by endpoint; predictions per arm and model version; swaps, governance
    refusals, prediction-log health and each worker's resource use."""

    def __init__(self) -> None:
        self.folder = multiprocess_dir()
        self.registry = CollectorRegistry(auto_describe=True)
        reg = None if self.folder is not None else self.registry
        self._lock = threading.Lock()
        self._served: dict[str, tuple[str, str]] = {}
        self._children: dict[tuple[str, int], tuple[Any, Any, Any]] = {}
        self._predictions: dict[tuple[str, str], Any] = {}
        self._published = {"records": 0, "dropped": 0, "commits": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.requests = Counter(f"{PREFIX}_requests", "Requests by endpoint and HTTP status.",
                                ["endpoint", "status"], registry=reg)
        self.errors = Counter(f"{PREFIX}_errors", "Responses with a 4xx or 5xx status, by endpoint and status.",
                              ["endpoint", "status"], registry=reg)
        self.latency = Histogram(f"{PREFIX}_request_latency_seconds", "Request latency by endpoint and status "
                                 "class (first byte in to the last byte out).", ["endpoint", "status_class"],
                                 buckets=BUCKETS, registry=reg)
        self.predictions = Counter(f"{PREFIX}_predictions", "Scored instances by arm and model version.",
                                   ["arm", "model_version"], registry=reg)
        self.hot_swaps = Counter(f"{PREFIX}_hot_swaps", "Models replaced while serving (each worker swaps).",
                                 registry=reg)
        self.refused = Counter(f"{PREFIX}_ungoverned_versions_refused", "Alias moves to a version without a "
                               "recorded blessing and infra validation, not served.", registry=reg)
        self.blocked = Gauge(f"{PREFIX}_governance_blocked", "1 while an alias points at a version the service "
                             "refuses.", registry=reg, multiprocess_mode="livemax")
        self.model_version = Gauge(f"{PREFIX}_model_version", "Registry version served per arm (0: none any more).",
                                   ["arm", "model"], registry=reg, multiprocess_mode="livemax")
        stage = Counter(f"{PREFIX}_stage_seconds", "CPU seconds prediction requests spent per stage: parse "
                        "(validation), lookup (prediction time, online features), predict (model inputs, model, "
                        "explanations), answer, log (records encoded and queued), encode (the response); and "
                        "log_wait, wall seconds until the records were durable (the thread serves others then).",
                        ["stage"], registry=reg)
        self.stages = {name: stage.labels(name) for name in STAGES}
        self.pending = Pending()
        self.fast_path = Counter(f"{PREFIX}_fast_path_requests", "Prediction requests answered without FastAPI's "
                                 "routing layers (the common case; the rest, e.g. refusals, go through it).",
                                 registry=reg)
        self.pass_requests = Histogram(f"{PREFIX}_scoring_pass_requests", "Requests scored together in one pass "
                                       "(coalesced: ready in the same event-loop turn).", buckets=PASS_BUCKETS,
                                       registry=reg)
        self._log_metrics(reg)
        self._process_metrics(reg)
        self.sample(None)

    def _log_metrics(self, reg: CollectorRegistry | None) -> None:
        name = f"{PREFIX}_prediction_log"
        self.log_backlog = Gauge(f"{name}_queue_depth", "Records accepted but not yet durable (queued, or held "
                                 "while the disk fails).", registry=reg, multiprocess_mode="livesum")
        self.log_counters = {
            "records": Counter(f"{name}_records", "Records written and fsynced to the prediction log.", registry=reg),
            "dropped": Counter(f"{name}_dropped", "Records refused because the backlog was full (their answers "
                               "said not-logged).", registry=reg),
            "commits": Counter(f"{name}_commits", "Group commits (one write + fsync each).", registry=reg),
        }
        self.log_degraded = Gauge(f"{name}_degraded", "1 while the prediction log cannot be written (any worker).",
                                  registry=reg, multiprocess_mode="livemax")

    def _process_metrics(self, reg: CollectorRegistry | None) -> None:
        """Per worker (label worker_pid): prometheus_client's ProcessCollector does not work across processes."""
        self.process = psutil.Process()
        self.pid = str(os.getpid())
        label = ["worker_pid"]  # not "pid": the multiprocess collector uses and drops that name
        self.rss = Gauge(f"{PREFIX}_process_resident_memory_bytes", "Resident memory of the worker.", label,
                         registry=reg, multiprocess_mode="livesum")
        self.cpu = Gauge(f"{PREFIX}_process_cpu_seconds", "CPU time (user + system) the worker has used.", label,
                         registry=reg, multiprocess_mode="livesum")
        self.fds = Gauge(f"{PREFIX}_process_open_fds", "Open file descriptors of the worker.", label,
                         registry=reg, multiprocess_mode="livesum")

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        children = self._children.get((endpoint, status))
        if children is None:
            code = str(status)
            children = (self.requests.labels(endpoint, code), self.errors.labels(endpoint, code) if status >= 400
                        else None, self.latency.labels(endpoint, status_class(status)))
            self._children[(endpoint, status)] = children
        self.pending.add(children[0], 1.0)
        if children[1] is not None:
            self.pending.add(children[1], 1.0)
        children[2].observe(seconds)

    def clock(self) -> StageClock:
        """A request's stage clock, started now."""
        return StageClock(self.stages, self.pending)

    def scored_pass(self, requests: int) -> None:
        self.pass_requests.observe(requests)

    def waited(self, seconds: float) -> None:
        """Wall time a request waited for its log records to be durable (its thread served others)."""
        self.pending.add(self.stages["log_wait"], seconds)

    def answered_fast(self) -> None:
        self.pending.add(self.fast_path, 1.0)

    def predicted(self, arm: str, count: int = 1, version: str | None = None) -> None:
        """`version` when the caller knows it; else the version last loaded for the arm (a shadow
        prediction is the challenger's)."""
        if version is None:
            served = self._served.get("challenger" if arm == "shadow" else arm)
            version = served[1] if served else "unknown"
        counter = self._predictions.get((arm, version))
        if counter is None:  # a labelled child once per arm and version: `labels` takes a lock and ~3 µs
            counter = self._predictions[(arm, version)] = self.predictions.labels(arm, version)
        self.pending.add(counter, float(count))

    def model_loaded(self, arm: str, name: str, version: str, swapped: bool) -> None:
        self.model_dropped(arm)
        with self._lock:
            self._served[arm] = (name, version)
            self.model_version.labels(arm, name).set(int(version) if version.isdigit() else -1)
            if swapped:
                self.hot_swaps.inc()

    def version_refused(self, blocked: bool) -> None:
        """An alias pointed at a version without a recorded blessing and infra validation."""
        self.refused.inc()
        self.blocked.set(int(blocked))

    def governance_cleared(self) -> None:
        self.blocked.set(0)

    def model_dropped(self, arm: str) -> None:
        """The arm serves nothing: its series goes (shared across workers it stays, at 0)."""
        with self._lock:
            served = self._served.pop(arm, None)
            if served is not None:
                self.model_version.labels(arm, served[0]).set(0)
                self.model_version.remove(arm, served[0])

    def sample(self, log: LogFigures | None) -> None:
        """Publish the request path's pending counts, this worker's resource use and (when given) its
        prediction log's figures."""
        self.pending.publish()
        with self._lock:
            with self.process.oneshot():
                times = self.process.cpu_times()
                self.rss.labels(self.pid).set(self.process.memory_info().rss)
                self.cpu.labels(self.pid).set(times.user + times.system)
                self.fds.labels(self.pid).set(self.process.num_fds() if hasattr(self.process, "num_fds") else 0)
            if log is None:
                return
            self.log_backlog.set(log.backlog)
            self.log_degraded.set(int(log.degraded))
            for key, now in (("records", log.written), ("dropped", log.dropped), ("commits", log.commits)):
                if now > self._published[key]:
                    self.log_counters[key].inc(now - self._published[key])
                    self._published[key] = now

    def start_sampling(self, log: LogFigures) -> None:
        """A daemon thread publishing `sample(log)` every SAMPLE_SECONDS, so a scrape answered by another
        worker sees this one's figures too."""
        def run() -> None:
            while not self._stop.wait(SAMPLE_SECONDS):
                self.sample(log)

        self.sample(log)
        self._thread = threading.Thread(target=run, name="metrics-sampler", daemon=True)
        self._thread.start()

    def stop_sampling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(SAMPLE_SECONDS + 1)
        self.pending.publish()  # the last seconds' counts, before the worker goes

    def render(self, log: LogFigures) -> bytes:
        """The text exposition format (0.0.4): this process's registry, or every worker's files."""
        self.sample(log)
        if self.folder is None:
            return generate_latest(self.registry)
        _forget_dead_workers(self.folder)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.folder))
        return generate_latest(registry)


class Pending:
    """Counter increments of the request path, added up in memory and published to their counters when
    /metrics is scraped and every SAMPLE_SECONDS (`Metrics.sample`). An increment of a shared (memory-mapped)
    counter costs ~1.2 µs; a request made about ten of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._amounts: dict[Any, float] = {}

    def add(self, counter: Any, amount: float) -> None:
        with self._lock:
            self._amounts[counter] = self._amounts.get(counter, 0.0) + amount

    def publish(self) -> None:
        with self._lock:
            amounts, self._amounts = self._amounts, {}
        for counter, amount in amounts.items():
            counter.inc(amount)


class StageClock:
    """CPU-time laps of one prediction request (this thread's CPU time, so requests interleaving on other
    threads or awaiting I/O do not count), each added to its stage's counter (through `Pending`)."""

    def __init__(self, counters: dict[str, Counter], pending: Pending) -> None:
        self.counters, self.pending, self.last = counters, pending, time.thread_time()

    def restart(self) -> None:
        """Continue in another thread (its own CPU clock)."""
        self.last = time.thread_time()

    def lap(self, stage: str) -> None:
        now = time.thread_time()
        self.pending.add(self.counters[stage], now - self.last)
        self.last = now


def _forget_dead_workers(folder: Path) -> None:
    """A worker that died (and was replaced) leaves its live gauges behind: drop them. Its counters stay."""
    for path in folder.iterdir():
        found = LIVE_FILE.match(path.name)
        if found and not psutil.pid_exists(int(found.group(1))):
            multiprocess.mark_process_dead(int(found.group(1)), str(folder))
