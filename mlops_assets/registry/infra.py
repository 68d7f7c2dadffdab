"""Infra validation: load the registered model exactly as serving will, in a fresh process.

The child process loads `models:/<name>/<version>` as pyfunc from the registry, scores the
canary rows in one batch and then row by row (timed); the parent compares its predictions with
the in-process ones and the latency with the budget (`project.infra.latency_budget_ms`).
A multiclass model's predictions are a probability row per canary row.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

PROBE_MODULE = "mlops_assets.registry.infra_probe"
TOLERANCE = 1e-9


@dataclass(frozen=True)
class InfraReport:
    passed: bool
    reasons: list[str]
    figures: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # not failures: e.g. requirements pinned at other versions


def expected_column(predictions: np.ndarray) -> np.ndarray | list[np.ndarray]:
    """In-process predictions as one canary column: a value per row, or a probability row per row."""
    predictions = np.asarray(predictions, dtype=float)
    return list(predictions) if predictions.ndim == 2 else predictions


def expected_array(column: pd.Series) -> np.ndarray:
    """The canary column back as an array: (n,) values or an (n, k) matrix."""
    values = column.to_numpy()
    return np.stack([np.asarray(v, dtype=float) for v in values]) if values.dtype == object else values.astype(float)


class ProbeProcess:
    """A fresh interpreter for the probe, started ahead of the check (`--wait`): it imports MLflow's stores
    and LightGBM while the run's other steps work, then loads the model when `run` hands it the URI.
    stderr goes to a file, so a chatty child never blocks on a full pipe."""

    def __init__(self) -> None:
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  (lives as long as the child)
        self._proc = subprocess.Popen([sys.executable, "-m", PROBE_MODULE, "--wait"], stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, stderr=self._stderr, text=True)

    def run(self, request: dict[str, object], timeout_seconds: float) -> tuple[int, str]:
        """(exit code, last stderr line); raises TimeoutExpired (the child killed) past the timeout."""
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.close()
        except BrokenPipeError:
            pass  # the child died while importing: its exit code and stderr say why
        try:
            code = self._proc.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            self.close()
            raise
        self._stderr.seek(0)
        last = (self._stderr.read().strip().splitlines() or ["no output"])[-1]
        self._stderr.close()
        return code, last

    def close(self) -> None:
        """Stop a child that was never used or overran; closing stdin alone ends a waiting one."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if not self._stderr.closed:
            self._stderr.close()


def validate_serving(model_uri: str, canary: pd.DataFrame, expected: np.ndarray, env: dict[str, str],
                     latency_budget_ms: float, timeout_seconds: float,
                     probe: ProbeProcess | None = None) -> InfraReport:
    """Run the probe (`probe`, started earlier, or a new one) and judge what it returns."""
    probe = probe or ProbeProcess()
    with tempfile.TemporaryDirectory() as tmp:
        rows, out = Path(tmp) / "canary.parquet", Path(tmp) / "result.json"
        request = {"uri": model_uri, "rows": str(rows), "out": str(out), "env": env}
        try:
            canary.to_parquet(rows)
            code, last = probe.run(request, timeout_seconds)
        except subprocess.TimeoutExpired:
            return InfraReport(False, [f"loading and scoring {model_uri} took over {timeout_seconds:.0f} s"])
        finally:
            probe.close()  # a child left waiting (the canary could not be written) is stopped here
        if code != 0 or not out.exists():
            last = last if len(last) <= 300 else "..." + last[-300:]
            return InfraReport(False, [f"{model_uri} could not be loaded or scored in a fresh process: {last}"])
        result = json.loads(out.read_text())
    return judge(np.asarray(result["predictions"]), expected, result, latency_budget_ms)


def judge(got: np.ndarray, expected: np.ndarray, result: dict, latency_budget_ms: float) -> InfraReport:
    reasons = []
    max_diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape and got.size else float("inf")
    if not max_diff <= TOLERANCE:
        reasons.append(f"served predictions differ from in-process ones (max |diff| {max_diff:.3g})")
    p99 = float(result["single_row_p99_ms"])
    if p99 > latency_budget_ms:
        reasons.append(f"single-row p99 latency {p99:.1f} ms exceeds the budget {latency_budget_ms} ms")
    figures = {"max_abs_diff": max_diff, "load_seconds": float(result["load_seconds"]),
               "single_row_p50_ms": float(result["single_row_p50_ms"]), "single_row_p99_ms": p99,
               "canary_rows": float(got.shape[0]) if got.ndim else 0.0}
    return InfraReport(not reasons, reasons, figures, result.get("load_warnings", []))
