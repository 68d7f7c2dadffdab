"""Child process of infra validation: `python -m mlops_assets.registry.infra_probe URI ROWS OUT`."""

from __future__ import annotations

import json
import sys
import time

import mlflow.pyfunc
import numpy as np
import pandas as pd

SINGLE_ROW_CALLS = 100


def main(model_uri: str, rows_path: str, out_path: str) -> None:
    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(model_uri)
    load_seconds = time.perf_counter() - started
    rows = pd.read_parquet(rows_path)
    predictions = np.asarray(model.predict(rows), dtype=float)
    latencies = []
    for i in range(min(SINGLE_ROW_CALLS, len(rows))):
        t0 = time.perf_counter()
        model.predict(rows.iloc[[i]])
        latencies.append((time.perf_counter() - t0) * 1000)
    with open(out_path, "w") as fh:
        json.dump({
            "predictions": predictions.tolist(), "load_seconds": load_seconds,
            "single_row_p50_ms": float(np.percentile(latencies, 50)),
            "single_row_p99_ms": float(np.percentile(latencies, 99)),
        }, fh)


if __name__ == "__main__":
    main(*sys.argv[1:4])
