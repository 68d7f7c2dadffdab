"""Great Expectations on several cores: GX validates in pure Python, so one batch keeps one core busy and a
run of many periods (a backfill range, `mlops-assets run`) would validate them one after another.

Once `start` ran (`mlops-assets run` does, first thing), batches go to worker processes, each importing
GX once and keeping its own context (GX 1.x: one per process); started ahead of need, their imports
overlap what the caller does meanwhile. Without it everything is validated in this process: runs that
Dagster runs side by side (a backfill, the daemon) must not each start a worker per core.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from functools import partial

import pandas as pd
import polars as pl

from mlops_assets.project.spec import SourceSpec
from mlops_assets.validation.reporting import ValidationReport

_POOL: ProcessPoolExecutor | None = None
MAX_WORKERS = 4  # each holds GX, pandas and polars (~500 MB): a year's periods gain little beyond this

Period = tuple[datetime, datetime] | None


def _import_gx(nice: int) -> None:
    os.nice(nice)
    import mlops_assets.validation.suites  # noqa: F401  (GX: seconds of imports, once per worker)


def _ready() -> None:
    """A task that only makes the pool start a worker (the pool spawns them as tasks arrive)."""


def _start_method() -> str:
    """fork while this process has no other thread (`mlops-assets run` starts the pool first thing): no
    interpreter start per worker, and no semaphores for a tracker process to report when the command ends
    with `os._exit`; spawn otherwise, since forking a process with threads can deadlock the child."""
    return "fork" if threading.active_count() == 1 else "spawn"


def start(workers: int | None = None, nice: int = 0) -> None:
    """Start the workers now (one per core, at most MAX_WORKERS, unless told); they import GX while the
    caller goes on. `nice` lowers their priority, so a caller with work of its own keeps its core."""
    global _POOL
    if _POOL is None:
        count = workers or min(os.cpu_count() or 1, MAX_WORKERS)
        _POOL = ProcessPoolExecutor(count, mp_context=multiprocessing.get_context(_start_method()),
                                    initializer=partial(_import_gx, nice))
        for _ in range(count):
            _POOL.submit(_ready)


def stop() -> None:
    """End the workers (the interpreter also ends them at exit)."""
    global _POOL
    if _POOL is not None:
        _POOL.shutdown(wait=True, cancel_futures=True)
        _POOL = None


def kill() -> None:
    """End the workers at once, for a caller about to exit: they are idle and hold nothing to lose, and an
    orderly exit of each (GX's heap freed object by object) costs seconds."""
    global _POOL
    if _POOL is not None:
        for process in list(_POOL._processes.values()):
            process.kill()
        _POOL.shutdown(wait=True)
        _POOL = None


def _validate(args: tuple[str, SourceSpec, pl.DataFrame | pd.DataFrame, str, Period]) -> ValidationReport:
    from mlops_assets.validation.suites import validate_batch

    return validate_batch(*args)


def validate_batches(name: str, spec: SourceSpec, frames: Sequence[pl.DataFrame | pd.DataFrame],
                     batch_names: Sequence[str], periods: Sequence[Period]) -> list[ValidationReport]:
    """`validate_batch` of each frame, in order: in the workers when the pool was started (a lone batch too:
    their GX is loaded, this process's may not be), else here; a pool that broke (a worker killed) is
    dropped and the batches validated here."""
    work = [(name, spec, frame, batch_name, period)
            for frame, batch_name, period in zip(frames, batch_names, periods, strict=True)]
    if _POOL is None:
        return [_validate(args) for args in work]
    try:
        return list(_POOL.map(_validate, work))
    except BrokenProcessPool:
        stop()
        return [_validate(args) for args in work]
