"""Shared pieces of the benchmarks: the flights project's data as validation hands it on, timing, goals.

"Validated-equivalent" sources are `data/*.parquet` with every declared column cast to its declared
type (`features.sources.DTYPES`), which is what the validation step hands to `prepare_all`.
Importing this module imports polars and the project loader only (no Dagster, no MLflow).
"""

from __future__ import annotations

import gc
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a checkout without an install
    sys.path.insert(0, str(ROOT))

from mlops_assets.features.repository import view_events  # noqa: E402
from mlops_assets.features.sources import DTYPES, prepare_all  # noqa: E402
from mlops_assets.project.loading import LoadedProject, load_project  # noqa: E402
from mlops_assets.project.spec import Project  # noqa: E402

FLIGHTS_PROJECT = ROOT / "projects" / "flights" / "project.yaml"
T = TypeVar("T")


def flights_project() -> LoadedProject:
    """The flights project file itself, whatever MLOPS_PROJECT says."""
    return load_project(FLIGHTS_PROJECT)


def typed(project: LoadedProject, name: str, frame: pl.DataFrame) -> pl.DataFrame:
    """Declared columns cast to their declared types (what validation hands on)."""
    schema = project.spec.sources[name].schema_
    return frame.with_columns(pl.col(c).cast(DTYPES[s.type]) for c, s in schema.items() if c in frame.columns)


def raw_sources(project: LoadedProject) -> dict[str, pl.DataFrame]:
    """Every source of the project read from its file and typed as declared."""
    out = {}
    for name in project.spec.sources:
        path = project.source_path(name)
        if path is None:
            continue
        frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, try_parse_dates=True)
        out[name] = typed(project, name, frame)
    return out


def view_event_frames(project: Project, prepared: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Every used view's events (offline store content) from the prepared sources."""
    return {v: view_events(project, v, prepared[project.feature_views[v].source]) for v in project.used_views}


def prepared_and_events(project: LoadedProject) -> tuple[dict[str, pl.DataFrame], dict[str, pl.DataFrame]]:
    """Typed raw sources -> `prepare_all` -> `view_events` per used view."""
    prepared = prepare_all(project, raw_sources(project))
    return prepared, view_event_frames(project.spec, prepared)


@dataclass(frozen=True)
class Timing(Generic[T]):
    """Wall times of repeated runs (perf_counter) and the last run's result."""

    runs_s: list[float]
    result: T
    cpu_s: list[float]  # CPU time of the process (all its threads) per run

    @property
    def best_s(self) -> float:
        return min(self.runs_s)

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)


def timed(fn: Callable[[], T], repeats: int) -> Timing[T]:
    """Run `fn` `repeats` times, a full garbage collection before each run (not timed)."""
    runs, cpu, result = [], [], None
    for _ in range(repeats):
        result = None
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        runs.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    assert result is not None
    return Timing(runs, result, cpu)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: an observed value, never an interpolated one."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def peak_rss_mb() -> float:
    """This process's peak resident set so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's resident set now (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine_line() -> str:
    """Python, polars, CPU count and load average (1, 5, 15 min) at the time of the call."""
    return (f"python {platform.python_version()}, polars {pl.__version__}, {os.cpu_count()} CPUs, "
            f"load average {load_average()}")


def same_value(served: object, expected: object, tolerance: float = 1e-9) -> bool:
    """Equal values; numbers to `tolerance` relative (absolute below 1); null equals null, NaN counts as null."""
    if isinstance(expected, float) and math.isnan(expected):
        expected = None
    if isinstance(served, float) and math.isnan(served):
        served = None
    if served is None or expected is None:
        return served is None and expected is None
    if isinstance(expected, bool) or isinstance(served, bool) or isinstance(expected, str) or isinstance(served, str):
        return served == expected
    if isinstance(expected, int | float) and isinstance(served, int | float):
        return abs(float(served) - float(expected)) <= tolerance * max(1.0, abs(float(expected)))
    return served == expected


def print_goals(goals: Sequence[tuple[str, bool]]) -> None:
    """The closing block: one `goal <what>: met/not met` line per goal."""
    print()
    for label, met in goals:
        print(f"goal {label}: {'met' if met else 'not met'}")
