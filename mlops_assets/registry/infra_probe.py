"""Child process of infra validation.

`python -m mlops_assets.registry.infra_probe URI ROWS OUT` loads and scores at once; with `--wait` it
imports what loading needs and then waits for one `URI ROWS OUT` line on stdin, so the imports (most of
its start) overlap the run's other steps. Either way the model is loaded in an interpreter that never
held a model before.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import numpy as np
import pandas as pd

from mlops_assets.serving.models import load_scoring_model

SINGLE_ROW_CALLS = 100


def client_rows(frame: pd.DataFrame) -> list[dict[str, object]]:
    """Canary rows as the service hands them to the model: dicts, missing values as None."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


class _Warnings(logging.Handler):
    """What the loader warned of (requirements that differ here), for the parent's report."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def main(model_uri: str, rows_path: str, out_path: str) -> None:
    """Load and score exactly as the service does (its loader, `matrix` + `predict_matrix`)."""
    warnings = _Warnings()
    logging.getLogger(load_scoring_model.__module__).addHandler(warnings)
    started = time.perf_counter()
    model = load_scoring_model(model_uri)
    load_seconds = time.perf_counter() - started
    rows = client_rows(pd.read_parquet(rows_path))
    predictions = np.asarray(model.predict_matrix(model.matrix(rows)), dtype=float)
    latencies = []
    for row in rows[:SINGLE_ROW_CALLS]:
        t0 = time.perf_counter()
        model.predict_matrix(model.matrix([row]))
        latencies.append((time.perf_counter() - t0) * 1000)
    with open(out_path, "w") as fh:
        json.dump({
            "predictions": predictions.tolist(), "load_seconds": load_seconds,
            "single_row_p50_ms": float(np.percentile(latencies, 50)),
            "single_row_p99_ms": float(np.percentile(latencies, 99)), "load_warnings": warnings.messages,
        }, fh)


def wait_and_run() -> None:
    """Import the stores loading will open, then take one request from stdin (EOF: the parent gave up)."""
    import lightgbm  # noqa: F401  (what unpickling the model imports)
    import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401  (what resolving models:/ imports)
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    request = json.loads(sys.stdin.readline() or "null")
    if request is not None:
        os.environ.update(request["env"])  # the stores of the run asking, read when the client is made
        main(request["uri"], request["rows"], request["out"])


if __name__ == "__main__":
    wait_and_run() if sys.argv[1:] == ["--wait"] else main(*sys.argv[1:4])
