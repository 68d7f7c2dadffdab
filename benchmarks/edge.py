"""Edge benchmark: the exported artifact's standalone runner against the registered MLflow pyfunc.

The same registered version, the same real feature rows (served flights), one machine. The edge
runner is timed inside a clean interpreter (`python -I -S`: standard library and the compiled model
only); the pyfunc in this process, loaded from the registry as serving loads it. Per model:

- artifact size (compiled library alone, and the whole folder with C sources, runner, manifest);
- single-row latency (each of 1000 rows scored alone) and 1000-row batch latency, p50/p99;
- cold start: `python -I -S predict.py` on one row, end to end (interpreter start included);
- parity: max |edge - pyfunc| over the 1000 rows.

By default the models are the serving fixtures' flights models (six weeks of real flights) in a
temporary registry, at each `--rounds` (boosting rounds, 15 leaves each); `--tracking-uri` with
`--project` benchmarks a real registry's champion instead.

    .venv/bin/python benchmarks/edge.py [--rounds 25 300] [--tracking-uri URI --project PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from _common import ROOT, machine_line, percentile, print_goals

from mlops_assets.edge.export import TOLERANCE, artifact_bytes, export_version, registry_client, resolve
from mlops_assets.project.loading import load_project

ROWS = 1000
BATCH_REPEATS = 30
GOAL_BYTES = 5 * 2**20
GOAL_SINGLE_P99_MS = 1.0

# Runs in the clean interpreter: import the artifact's runner by path, time it, print JSON.
CLEAN_TIMER = r"""
import importlib.util, json, sys, time
folder, rows_path, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = importlib.util.spec_from_file_location("predict", folder + "/predict.py")
runner = importlib.util.module_from_spec(spec); spec.loader.exec_module(runner)
model = runner.EdgeModel(runner.Path(folder))
rows = [json.loads(line) for line in open(rows_path)]
single = []
for row in rows:
    start = time.perf_counter(); model.predict([row]); single.append(time.perf_counter() - start)
batch = []
for _ in range(repeats):
    start = time.perf_counter(); out = model.predict(rows); batch.append(time.perf_counter() - start)
print(json.dumps({"single": single, "batch": batch, "outputs": out, "imported": sorted(sys.modules)}))
"""


def ms(values: list[float], pct: float) -> float:
    return percentile(values, pct) * 1000


def clean_env(folder: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(folder)}


def edge_timings(artifact: Path, rows_path: Path) -> dict:
    done = subprocess.run([sys.executable, "-I", "-S", "-c", CLEAN_TIMER, str(artifact), str(rows_path),
                           str(BATCH_REPEATS)], capture_output=True, text=True, cwd=artifact.parent,
                          env=clean_env(artifact.parent), check=True)
    result = json.loads(done.stdout)
    assert not {"numpy", "lightgbm", "mlops_assets"} & set(result["imported"]), "the runner imported the platform"
    cold = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-S", str(artifact / "predict.py"), str(rows_path.with_suffix(".one"))],
                       capture_output=True, cwd=artifact.parent, env=clean_env(artifact.parent), check=True)
        cold.append(time.perf_counter() - start)
    return {**result, "cold": cold}


def pyfunc_timings(uri: str, rows: list[dict]) -> dict:
    model = mlflow.pyfunc.load_model(uri)
    frames = [pd.DataFrame([row]) for row in rows]
    model.predict(frames[0])
    single = []
    for frame in frames:
        start = time.perf_counter()
        model.predict(frame)
        single.append(time.perf_counter() - start)
    batch, everything, out = [], pd.DataFrame(rows), None
    for _ in range(BATCH_REPEATS):
        start = time.perf_counter()
        out = model.predict(everything)
        batch.append(time.perf_counter() - start)
    return {"single": single, "batch": batch, "outputs": out}


def benchmark(label: str, tracking_uri: str, name: str, version: str, threshold: float, rows: list[dict],
              work: Path) -> dict:
    """Export, time both sides, compare; one printed block."""
    start = time.perf_counter()
    artifact = work / f"edge_{label}"
    export_version(tracking_uri, None, name, version, artifact, threshold=threshold)
    export_s = time.perf_counter() - start
    rows_path = work / f"rows_{label}.jsonl"
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows_path.with_suffix(".one").write_text(json.dumps(rows[0]) + "\n")
    edge = edge_timings(artifact, rows_path)
    source = registry_client(tracking_uri).get_model_version_download_uri(name, version)
    ours = pyfunc_timings(source, rows)
    flat = [v for out in edge["outputs"] for v in out]
    theirs = [float(v) for v in pd.DataFrame(ours["outputs"]).to_numpy().ravel()]
    diff = max(abs(a - b) for a, b in zip(flat, theirs, strict=True))
    sizes = artifact_bytes(artifact)
    figures = {
        "label": label, "library_bytes": sizes["library"], "artifact_bytes": sizes["total"], "export_s": export_s,
        "edge_single_p50_ms": ms(edge["single"], 50), "edge_single_p99_ms": ms(edge["single"], 99),
        "edge_batch_p50_ms": ms(edge["batch"], 50), "edge_batch_p99_ms": ms(edge["batch"], 99),
        "edge_cold_start_ms": statistics.median(edge["cold"]) * 1000,
        "pyfunc_single_p50_ms": ms(ours["single"], 50), "pyfunc_single_p99_ms": ms(ours["single"], 99),
        "pyfunc_batch_p50_ms": ms(ours["batch"], 50), "pyfunc_batch_p99_ms": ms(ours["batch"], 99),
        "max_abs_diff": diff,
    }
    print(f"\n{label}: {name} v{version}, export {export_s:.1f} s")
    print(f"  size: library {sizes['library']:,} B, artifact {sizes['total']:,} B (C sources, runner, manifest)")
    print(f"  {'':8} {'single p50':>11} {'single p99':>11} {f'{ROWS}-row p50':>12} {f'{ROWS}-row p99':>12}")
    for side in ("edge", "pyfunc"):
        f = figures
        print(f"  {side:8} {f[f'{side}_single_p50_ms']:9.3f}ms {f[f'{side}_single_p99_ms']:9.3f}ms "
              f"{f[f'{side}_batch_p50_ms']:10.2f}ms {f[f'{side}_batch_p99_ms']:10.2f}ms")
    print(f"  edge cold start (interpreter + load + one row): {figures['edge_cold_start_ms']:.0f} ms")
    print(f"  parity: max |edge - pyfunc| = {diff:.3g} over {len(rows)} rows (tolerance {TOLERANCE:g})")
    return figures


def fixture_models(work: Path, rounds: list[int]) -> tuple[str, str, float, list[tuple[str, str]], list[dict]]:
    """The serving fixtures' flights platform, one governed version per rounds count; its served rows."""
    sys.path.insert(0, str(ROOT))
    import polars as pl

    from mlops_assets.features.repository import model_features
    from mlops_assets_tests.serving_fixtures import LABEL, build_flights, train

    platform = build_flights(work)
    spec, features = platform.spec, model_features(platform.spec)
    rows_train = platform.frame.filter(pl.col("split") == "train")
    label = (rows_train[LABEL] > spec.label.threshold.above).cast(pl.Int8)  # type: ignore[union-attr]
    versions = [(f"{r}_rounds", platform.log_version(train(rows_train, features, label, "binary", 7, rounds=r)))
                for r in rounds]
    served = platform.served()
    rows = served.sample(n=min(ROWS, served.height), seed=1).select(features).to_dicts()
    return platform.tracking_uri, platform.model_name, spec.threshold, versions, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, nargs="+", default=[25, 300])
    parser.add_argument("--tracking-uri", help="benchmark this registry's champion (with --project)")
    parser.add_argument("--project", help="the project file of that registry")
    parser.add_argument("--rows", type=Path, help="JSON lines of feature rows (with --tracking-uri)")
    args = parser.parse_args()
    print(f"edge benchmark: {machine_line()}")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if args.tracking_uri:
            if not (args.project and args.rows):
                parser.error("--tracking-uri needs --project and --rows")
            spec = load_project(args.project).spec
            version = resolve(registry_client(args.tracking_uri), spec.model_name, None, "champion")
            rows = [json.loads(line) for line in args.rows.read_text().splitlines()[:ROWS] if line.strip()]
            results = [benchmark("champion", args.tracking_uri, spec.model_name, version, spec.threshold, rows, work)]
        else:
            uri, name, threshold, versions, rows = fixture_models(work, args.rounds)
            results = [benchmark(label, uri, name, version, threshold, rows, work) for label, version in versions]
    print(f"\nload average after: {machine_line()}")
    goals = []
    for r in results:
        goals += [(f"{r['label']} artifact <= 5 MB ({r['artifact_bytes']:,} B)", r["artifact_bytes"] <= GOAL_BYTES),
                  (f"{r['label']} edge single-row p99 <= {GOAL_SINGLE_P99_MS} ms ({r['edge_single_p99_ms']:.3f} ms)",
                   r["edge_single_p99_ms"] <= GOAL_SINGLE_P99_MS),
                  (f"{r['label']} edge {ROWS}-row p50 below the pyfunc's ({r['edge_batch_p50_ms']:.2f} vs "
                   f"{r['pyfunc_batch_p50_ms']:.2f} ms)", r["edge_batch_p50_ms"] < r["pyfunc_batch_p50_ms"]),
                  (f"{r['label']} parity max |diff| <= {TOLERANCE:g} ({r['max_abs_diff']:.3g})",
                   r["max_abs_diff"] <= TOLERANCE)]
    print_goals(goals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
