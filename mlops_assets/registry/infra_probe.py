"""Child process of infra validation: `python -m mlops_assets.registry.infra_probe URI ROWS OUT`."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pandas as pd

from mlops_assets.serving.models import load_scoring_model

SINGLE_ROW_CALLS = 100


def client_rows(frame: pd.DataFrame) -> list[dict[str, object]]:
    """Canary rows as the service hands them to the model: dicts, missing values as None."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def main(model_uri: str, rows_path: str, out_path: str) -> None:
    """Load and score exactly as the service does (its loader, `matrix` + `predict_matrix`)."""
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
            "single_row_p99_ms": float(np.percentile(latencies, 99)),
        }, fh)


if __name__ == "__main__":
    main(*sys.argv[1:4])
