"""Serving benchmark: this prediction service against ``mlflow models serve`` of the same champion.

Same registered model version, same machine, same worker count, the same real flights, one server at
a time, loaded by ``wrk`` (8 connections, 2 threads, 20 s by default) with a Lua script that rotates
through JSON bodies and prints latency percentiles as JSON (``serving_wrk/post_json.lua``):

- ours: ``POST /v1/predict`` with the flight as a client knows it (the flights project's request
  fields: online-store feature lookup, model, prediction-log record per row), then
  ``/v1/predict/batch`` with 100 flights;
- MLflow: ``POST /invocations`` with the *feature vector* of the same flights (``dataframe_split``,
  taken from the training set): no lookup and no logging, so it does strictly less work per row;
- plain LightGBM: the same trained booster saved with MLflow's LightGBM flavour
  (``mlflow.lightgbm.save_model``, in a temporary folder) under ``mlflow models serve``, sent the
  same vectors with categories as the model's level codes (the flavour takes numbers only): the
  honest reference, since MLflow serving our pyfunc times the pyfunc's per-call overhead;
- floor: a bare ASGI app (``serving_wrk/floor_app.py``) under uvicorn with our settings, sent our
  bodies: what a request costs on this HTTP stack before any work, so the gap to a goal can be
  told apart from the stack's own ceiling.

Our service's time per request is split by stage (its ``mlops_serving_stage_seconds`` counters,
scraped from ``/metrics`` before and after each run): parse, lookup, predict, answer, log, encode,
and log_wait (until the records are durable; the thread serves others meanwhile); beside it, how
many requests a scoring pass held (``mlops_serving_scoring_pass_requests``: requests ready in the
same event-loop turn are scored together). The goals' verdicts end with what the latency goals
imply for throughput (Little's law: wrk keeps ``--connections`` requests in flight).

Needs a champion and an online store of the flights project (``projects/flights/project.yaml``)
in the state folder (``MLOPS_STATE_DIR``, default ``.mlops_state/flights``: run ``make run`` first,
or ``benchmarks/continuous_training.py --keep``). Our service runs with that project file
(``MLOPS_PROJECT``); its prediction log goes to a temporary folder, so monitoring data is
untouched; its records are counted against the requests wrk saw answered.

    .venv/bin/python benchmarks/serving.py [--duration 20] [--connections 8] [--workers 1] [--servers ours mlflow lightgbm floor]

Prints a table and writes ``benchmarks/results/serving.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from mlops_assets.project.spec import RequestFieldSpec
    from mlops_assets.scoring_model import ScoringModel

ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = ROOT / "benchmarks" / "results" / "serving.json"
LUA_SCRIPT = ROOT / "benchmarks" / "serving_wrk" / "post_json.lua"
FLOOR_APP_DIR = ROOT / "benchmarks" / "serving_wrk"  # floor_app.py: the bare ASGI app
HOST = "127.0.0.1"
WRK_MARK = "WRK_JSON "
PROJECT = "flights"
PROJECT_FILE = ROOT / "projects" / PROJECT / "project.yaml"
READY_TIMEOUT_S, STOP_TIMEOUT_S = 180.0, 60.0
GOAL_SINGLE_REQ_S, GOAL_SINGLE_P99_MS = 3000.0, 5.0  # issue 14, 1 worker, wrk -c8
GOAL_BATCH_ROWS_S, GOAL_BATCH_P99_MS = 40000.0, 15.0
STAGE_METRIC = "mlops_serving_stage_seconds_total"
PASS_METRIC = "mlops_serving_scoring_pass_requests"
SERVERS = ("ours", "mlflow", "lightgbm", "floor")
BUSY_CORES = 0.25
MIN_BALANCE, MAX_TRIES = 0.5, 3
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Champion:
    """The registered version both servers serve, where its registry lives, its input columns, and the
    request fields a client sends (the project's declaration)."""

    name: str
    version: str
    tracking_uri: str
    features: list[str]
    categorical: frozenset[str]
    request_fields: dict[str, RequestFieldSpec]
    model: ScoringModel


@dataclass
class Bench:
    """Everything a run needs: options, state folder, child environment, scratch folder, bodies."""

    args: argparse.Namespace
    state: Path
    champion: Champion
    env: dict[str, str]
    workdir: Path
    bodies: dict[tuple[str, str], Path] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=20, help="seconds per measured wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unrecorded load before each run")
    parser.add_argument("--flights", type=int, default=16, help="distinct single-row bodies rotated")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--batches", type=int, default=5, help="distinct batch bodies rotated")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS,
                        help="which to measure (goals comparing ours with a reference need both)")
    return parser.parse_args(argv)


def fail(message: str) -> NoReturn:
    """Stop with a message that says what to do, not a traceback."""
    print(f"serving benchmark: {message}", file=sys.stderr)
    raise SystemExit(2)


def state_folder() -> Path:
    """MLOPS_STATE_DIR exactly, else the flights project's default state folder."""
    return Path(os.environ.get("MLOPS_STATE_DIR") or ROOT / ".mlops_state" / PROJECT).resolve()


def tracking_uri(state: Path) -> str:
    """Same rule as the service: MLFLOW_TRACKING_URI, else the SQLite store in the state folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state / 'mlflow' / 'mlflow.db'}"


def find_champion(state: Path) -> Champion:
    """The champion's version and input columns; never creates a store (a client on a missing
    SQLite file would create an empty one)."""
    hint = (f"run `MLOPS_PROJECT={PROJECT} make run` first (state folder {state}; "
            "set MLOPS_STATE_DIR to use another)")
    uri = tracking_uri(state)
    if not (state / "online_store.db").is_file():
        fail(f"no online store at {state / 'online_store.db'}: {hint}")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        fail(f"no MLflow store at {uri}: {hint}")
    from mlflow import MlflowClient

    from mlops_assets.project.loading import load_project
    from mlops_assets.registry.registry import CHAMPION, alias_version
    from mlops_assets.serving.models import load_version

    spec = load_project(PROJECT_FILE).spec
    name = spec.model_name
    client = MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)
    champion = alias_version(client, name, CHAMPION)
    if champion is None:
        fail(f"no champion for {name} in {uri}: {hint}")
    model = load_version(client, name, champion)
    return Champion(name, champion, uri, list(model.features), frozenset(model.categorical_levels),
                    dict(spec.request.fields), model)


def test_flights(state: Path, count: int) -> pl.DataFrame:
    """Real test-month flights of the current training set (same rows for both servers)."""
    from mlops_assets.lake import Lake, read_training_set
    from mlops_assets.settings import DATA_DIR

    try:
        frame, _ = read_training_set(Lake(root=state, data_dir=DATA_DIR))
    except FileNotFoundError as exc:
        fail(f"{exc}: run `MLOPS_PROJECT={PROJECT} make run` first")
    test = frame.filter(pl.col("split") == "test")
    return test.sample(min(count, test.height), seed=13, shuffle=True)


def ours_instance(row: dict[str, Any], fields: dict[str, RequestFieldSpec]) -> dict[str, Any]:
    """A flight as a client sends it: the project's request fields, JSON-typed as declared (datetimes
    as ISO 8601 with their UTC offset, floats as floats); an optional field the row lacks is null."""
    instance: dict[str, Any] = {}
    for name, spec in fields.items():
        value = row.get(name)
        if value is not None and spec.type in {"datetime", "date"}:
            value = value.isoformat()
        elif value is not None and spec.type in {"float", "int"}:
            value = float(value) if spec.type == "float" else int(value)
        instance[name] = value
    return instance


def mlflow_body(rows: list[dict[str, Any]], champion: Champion) -> dict[str, Any]:
    """MLflow's dataframe_split with the model's inputs: text categories, float numbers, null if absent."""
    data = [
        [r[f] if r[f] is None or f in champion.categorical else float(r[f]) for f in champion.features]
        for r in rows
    ]
    return {"dataframe_split": {"columns": champion.features, "data": data}}


def vector_body(rows: list[dict[str, Any]], champion: Champion) -> dict[str, Any]:
    """The same inputs as numbers only (categories as the model's level codes, missing as null), which is
    what the LightGBM flavour accepts; the model scores them exactly as our service's matrix."""
    data = champion.model.matrix(rows).tolist()  # a missing value is NaN, which json writes and MLflow reads
    return {"dataframe_split": {"columns": champion.features, "data": data}}


def write_bodies(bench: Bench) -> None:
    """One JSON body per line per (server, mode); single rows are the first flights of the batches."""
    args, size = bench.args, bench.args.batch_size
    rows = test_flights(bench.state, max(args.flights, size * args.batches)).to_dicts()
    batches = [rows[i * size : (i + 1) * size] for i in range(args.batches)]
    fields = bench.champion.request_fields
    bodies = {
        ("ours", "single"): [ours_instance(r, fields) for r in rows[: args.flights]],
        ("ours", batch_mode(args)): [{"instances": [ours_instance(r, fields) for r in b]} for b in batches],
        ("mlflow", "single"): [mlflow_body([r], bench.champion) for r in rows[: args.flights]],
        ("mlflow", batch_mode(args)): [mlflow_body(b, bench.champion) for b in batches],
        ("lightgbm", "single"): [vector_body([r], bench.champion) for r in rows[: args.flights]],
        ("lightgbm", batch_mode(args)): [vector_body(b, bench.champion) for b in batches],
    }
    for key, items in bodies.items():
        path = bench.workdir / f"{key[0]}_{key[1]}.jsonl"
        path.write_text("".join(json.dumps(item) + "\n" for item in items))
        bench.bodies[key] = path
    for mode in ("single", batch_mode(args)):  # the floor is sent our bodies: same bytes on the wire
        bench.bodies[("floor", mode)] = bench.bodies[("ours", mode)]


def batch_mode(args: argparse.Namespace) -> str:
    return f"batch{args.batch_size}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http(url: str, body: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET/POST without any proxy from the environment (everything here is on 127.0.0.1)."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        with NO_PROXY.open(urllib.request.Request(url, body, headers), timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> float:
    """Poll the readiness URL; a server that exits or never gets ready ends the benchmark."""
    started = time.perf_counter()
    while time.perf_counter() - started < READY_TIMEOUT_S:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"server exited with {proc.returncode} before ready:\n{tail}")
        try:
            if http(url, timeout=2.0)[0] == 200:
                return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {READY_TIMEOUT_S:.0f} s (log: {log_path})")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the leader (graceful: our service drains its log), then kill what is left of the group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"  server {proc.pid} ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s; killing it", flush=True)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    proc.wait()


@contextmanager
def serving(cmd: list[str], env: dict[str, str], ready_url: str, workdir: Path, name: str) -> Iterator[int]:
    """A server in its own session (so its workers are one process group), stopped however we leave."""
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        seconds = wait_ready(proc, ready_url, log_path)
        print(f"  {name}: ready after {seconds:.1f} s", flush=True)
        yield proc.pid
    finally:
        stop(proc)


def session_cpu_seconds(session: int) -> dict[int, float]:
    """User + system CPU so far of every live process in a session (the server and its workers), by pid."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:
            out[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return out


def balance(before: dict[int, float], after: dict[int, float], workers: int) -> float:
    """Least over most busy of the `workers` busiest processes: 1 is even, 0 a worker that got nothing."""
    if workers == 1:
        return 1.0
    busy = sorted((after[pid] - before.get(pid, 0.0) for pid in after), reverse=True)[:workers]
    return busy[-1] / busy[0] if len(busy) == workers and busy[0] > 0 else 0.0


def run_wrk(url: str, bodies: Path, seconds: int, args: argparse.Namespace) -> dict[str, Any]:
    """One wrk run; returns the Lua summary (latencies in microseconds)."""
    cmd = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(bodies),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((x for x in out.stdout.splitlines() if x.startswith(WRK_MARK)), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return json.loads(line.removeprefix(WRK_MARK))


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine spent (not idle, not waiting on I/O) since boot."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLOCK_TICKS


def cpu_snapshot(session: int) -> tuple[dict[str, float], dict[int, float]]:
    """CPU seconds so far of the server, of wrk (reaped children), of the whole machine; and per pid."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    pids = session_cpu_seconds(session)
    totals = {
        "server": sum(pids.values()),
        "wrk": children.ru_utime + children.ru_stime,
        "machine": machine_busy_seconds(),
    }
    return totals, pids


def settle(session: int, idle_cores: float = 0.1, limit_s: float = 15.0) -> None:
    """Wait until the server has finished what the previous run left in flight. Started while one
    worker still drains its queue, the next run's connections are all accepted by the other one."""
    deadline = time.perf_counter() + limit_s
    while time.perf_counter() < deadline:
        before = sum(session_cpu_seconds(session).values())
        time.sleep(0.25)
        if (sum(session_cpu_seconds(session).values()) - before) / 0.25 < idle_cores:
            return


def timed_run(url: str, bodies: Path, session: int, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """A recorded run with the cores the server, wrk and anything else kept busy (the machine may be
    shared, and a busy neighbour explains a bad run) and how evenly the workers shared the work."""
    settle(session)
    before, pids_before = cpu_snapshot(session)
    raw = run_wrk(url, bodies, args.duration, args)
    after, pids_after = cpu_snapshot(session)
    seconds = raw["duration_us"] / 1e6
    cores = {k: (after[k] - before[k]) / seconds for k in before}
    raw["cores"] = {**cores, "other": max(0.0, cores["machine"] - cores["server"] - cores["wrk"])}
    raw["balance"] = balance(pids_before, pids_after, workers)
    return raw


def measured(url: str, bodies: Path, session: int, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up, then the recorded run, each on an idle server; the run is repeated (up to MAX_TRIES)
    while one worker got (nearly) none of the connections. uvicorn workers share one listening socket
    and wrk opens its keep-alive connections at once, so that split is the kernel's doing, not the
    server's, and it would decide the result. Discarded runs are kept in the results."""
    settle(session)
    warmup = run_wrk(url, bodies, args.warmup, args)["requests"] if args.warmup > 0 else 0
    discarded: list[dict[str, Any]] = []
    raw = timed_run(url, bodies, session, workers, args)
    while raw["balance"] < MIN_BALANCE and len(discarded) + 1 < MAX_TRIES:
        print(f"    workers shared the connections unevenly (balance {raw['balance']:.2f}); run again")
        rate = raw["requests"] / raw["duration_us"] * 1e6
        discarded.append({"requests": raw["requests"], "req_per_s": rate, "balance": raw["balance"]})
        raw = timed_run(url, bodies, session, workers, args)
    raw.update(
        warmup_requests=warmup, discarded=discarded, wrk_runs=int(args.warmup > 0) + len(discarded) + 1
    )
    return raw


def shape(server: str, workers: int, mode: str, rows: int, raw: dict[str, Any]) -> dict[str, Any]:
    """The figures of one run, in the units of the table."""
    seconds, latency = raw["duration_us"] / 1e6, raw["latency_us"]
    return {
        "server": server,
        "workers": workers,
        "mode": mode,
        "rows_per_request": rows,
        "requests": raw["requests"],
        "warmup_requests": raw["warmup_requests"],
        "wrk_runs": raw["wrk_runs"],
        "tries": len(raw["discarded"]) + 1,
        "discarded_runs": raw["discarded"],
        "worker_balance": round(raw["balance"], 2),
        "seconds": round(seconds, 3),
        "req_per_s": raw["requests"] / seconds,
        "rows_per_s": raw["requests"] * rows / seconds,
        **{f"{p}_ms": latency[p] / 1000 for p in ("p50", "p90", "p99", "p99_9", "max")},
        "mean_ms": latency["mean"] / 1000,
        "errors": sum(raw["errors"].values()),
        "errors_by_kind": raw["errors"],
        "cpu_cores": {k: round(v, 2) for k, v in raw["cores"].items()},
    }


def stage_seconds(base: str) -> dict[str, float]:
    """Our service's seconds per stage so far (its /metrics; summed over workers)."""
    status, text = http(f"{base}/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line.startswith(STAGE_METRIC + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('stage="', 1)[1].split('"', 1)[0]] = float(value)
    return out


def pass_counts(base: str) -> tuple[float, float]:
    """(requests scored, scoring passes) so far: requests ready together are scored in one pass."""
    text = http(f"{base}/metrics")[1].decode()
    found = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line.startswith(PASS_METRIC)}
    return found.get(f"{PASS_METRIC}_sum", 0.0), found.get(f"{PASS_METRIC}_count", 0.0)


def resident_bytes(base: str) -> float:
    """Resident memory of all our workers (their /metrics gauge)."""
    text = http(f"{base}/metrics")[1].decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("mlops_serving_process_resident_memory_bytes{"))


def stage_split(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """Milliseconds per request in each stage, between two scrapes."""
    return {k: (after[k] - before.get(k, 0.0)) * 1000 / requests for k in after} if requests else {}


def run_modes(
    bench: Bench, server: str, workers: int, session: int, base: str, paths: dict[str, str]
) -> list[dict]:
    """Single rows, then batches, against one running server (ours: with the time per stage)."""
    results = []
    for mode, path in paths.items():
        rows = 1 if mode == "single" else bench.args.batch_size
        before = stage_seconds(base) if server == "ours" else {}
        passes_before = pass_counts(base) if server == "ours" else (0.0, 0.0)
        raw = measured(f"{base}{path}", bench.bodies[(server, mode)], session, workers, bench.args)
        results.append(shape(server, workers, mode, rows, raw))
        if server == "ours":
            counted = raw["requests"] + raw["warmup_requests"] + sum(d["requests"] for d in raw["discarded"])
            results[-1]["stage_ms_per_request"] = stage_split(before, stage_seconds(base), counted)
            scored, passes = (a - b for a, b in zip(pass_counts(base), passes_before, strict=True))
            results[-1]["requests_per_pass"] = round(scored / passes, 2) if passes else None
        print(f"  {server} w={workers} {mode}: {results[-1]['req_per_s']:.0f} req/s", flush=True)
    return results


def smoke_ours(base: str, bench: Bench) -> None:
    """One real request before the load: 200 and the champion's version, or stop here."""
    body = bench.bodies[("ours", "single")].read_text().splitlines()[0].encode()
    status, answer = http(f"{base}/v1/predict", body)
    model = json.loads(answer).get("model", {}) if status == 200 else {}
    if model.get("version") != bench.champion.version:
        raise RuntimeError(f"our service answered {status}: {answer[:500]!r}")


def smoke_mlflow(base: str, bench: Bench, server: str) -> None:
    """One request: a prediction, and for the plain booster the champion's own score of that flight."""
    body = bench.bodies[(server, "single")].read_text().splitlines()[0].encode()
    status, answer = http(f"{base}/invocations", body)
    predictions = json.loads(answer).get("predictions", []) if status == 200 else []
    if len(predictions) != 1:
        raise RuntimeError(f"{server} answered {status}: {answer[:500]!r}")
    if server == "lightgbm":
        row = json.loads(body)["dataframe_split"]["data"][0]
        expected = float(bench.champion.model.predict_matrix(np.array([row], dtype=float))[0])
        if abs(float(np.ravel(predictions[0])[0]) - expected) > 1e-12:
            raise RuntimeError(f"the plain booster scored {predictions[0]}, the champion {expected}")


def bench_ours(bench: Bench, workers: int) -> tuple[list[dict], dict[str, Any]]:
    """Our service with its prediction log in a temporary folder, counted after a clean stop."""
    port = free_port()
    base = f"http://{HOST}:{port}"
    cmd = [
        sys.executable,
        "-m",
        "mlops_assets.serving",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    with tempfile.TemporaryDirectory(prefix="serving-log-", dir=bench.workdir) as log_dir:
        env = {**bench.env, "MLOPS_SERVING_LOG_DIR": log_dir}
        with serving(cmd, env, f"{base}/ready", bench.workdir, f"ours-w{workers}") as session:
            smoke_ours(base, bench)
            paths = {"single": "/v1/predict", batch_mode(bench.args): "/v1/predict/batch"}
            results = run_modes(bench, "ours", workers, session, base, paths)
            rss = resident_bytes(base)
            for r in results:
                r["service_rss_mb"] = round(rss / 2**20)
        counts = count_log(Path(log_dir))
    return results, log_check(counts, results, bench.args)


def lightgbm_model(bench: Bench) -> Path:
    """The champion's booster saved with MLflow's LightGBM flavour (a scratch folder, not the registry)."""
    import lightgbm as lgb
    import mlflow.lightgbm

    path = bench.workdir / "lightgbm_flavour"
    if not path.exists():
        booster = lgb.Booster(model_str=bench.champion.model.booster.model_to_string())
        booster.pandas_categorical = None  # JSON has no pandas categoricals: it takes the level codes as numbers
        mlflow.lightgbm.save_model(booster, str(path))
    return path


def bench_mlflow(bench: Bench, workers: int, server: str = "mlflow") -> list[dict]:
    """`mlflow models serve` of the same version (or, for "lightgbm", of the plain booster), local
    environment, same worker count."""
    port = free_port()
    base = f"http://{HOST}:{port}"
    uri = (f"models:/{bench.champion.name}/{bench.champion.version}" if server == "mlflow"
           else str(lightgbm_model(bench)))
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "models",
        "serve",
        "-m",
        uri,
        "--env-manager",
        "local",
        "-h",
        HOST,
        "-p",
        str(port),
        "-w",
        str(workers),
    ]
    with serving(cmd, bench.env, f"{base}/ping", bench.workdir, f"{server}-w{workers}") as session:
        smoke_mlflow(base, bench, server)
        paths = {"single": "/invocations", batch_mode(bench.args): "/invocations"}
        return run_modes(bench, server, workers, session, base, paths)


def bench_floor(bench: Bench, workers: int) -> list[dict]:
    """The bare ASGI app (`serving_wrk/floor_app.py`) under uvicorn with our service's settings, sent our
    bodies: the requests per second no work at all would reach here, wrk included."""
    port = free_port()
    base = f"http://{HOST}:{port}"
    cmd = [sys.executable, "-m", "uvicorn", "floor_app:app", "--app-dir", str(FLOOR_APP_DIR), "--host", HOST,
           "--port", str(port), "--workers", str(workers), "--loop", "uvloop", "--http", "httptools",
           "--no-access-log", "--log-level", "warning"]
    with serving(cmd, bench.env, f"{base}/ready", bench.workdir, f"floor-w{workers}") as session:
        paths = {"single": "/v1/predict", batch_mode(bench.args): "/v1/predict/batch"}
        return run_modes(bench, "floor", workers, session, base, paths)


def count_log(log_dir: Path) -> Counter[str]:
    """Complete records per endpoint and how many are 200s, counted in the raw lines (fast on GBs)."""
    counts: Counter[str] = Counter()
    for path in log_dir.glob("date=*/part-*.jsonl"):
        data = path.read_bytes()
        data = data[: data.rfind(b"\n") + 1]
        counts["records"] += data.count(b"\n")
        counts["status_200"] += data.count(b'"status":200,')
        counts["single"] += data.count(b'"endpoint":"/v1/predict",')
        counts["batch"] += data.count(b'"endpoint":"/v1/predict/batch",')
    return counts


def log_check(counts: Counter[str], results: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    """Records vs rows wrk saw answered (+1 smoke request). wrk stops with up to `connections`
    requests in flight per run; the server still answers and logs those, so records may exceed
    the answered rows by at most that much, never fall short."""
    check: dict[str, Any] = {"records": counts["records"], "status_200": counts["status_200"]}
    for result, key, extra in ((results[0], "single", 1), (results[1], "batch", 0)):
        rows = result["rows_per_request"]
        unrecorded = result["warmup_requests"] + sum(d["requests"] for d in result["discarded_runs"])
        answered = (result["requests"] + unrecorded) * rows + extra
        slack = counts[key] - answered
        check[key] = {
            "records": counts[key],
            "answered_rows": answered,
            "in_flight_at_stop": slack,
            "ok": 0 <= slack <= result["wrk_runs"] * args.connections * rows and slack % rows == 0,
        }
    check["ok"] = (
        check["single"]["ok"]
        and check["batch"]["ok"]
        and counts["records"] == counts["status_200"] == counts["single"] + counts["batch"]
    )
    return check


def child_env(bench_state: Path, uri: str, workdir: Path) -> dict[str, str]:
    """Both servers see the same stores and our service the flights project; the venv's bin first
    (mlflow serve execs `uvicorn`)."""
    env = {
        **os.environ,
        "MLOPS_PROJECT": str(PROJECT_FILE),
        "MLOPS_STATE_DIR": str(bench_state),
        "MLFLOW_TRACKING_URI": uri,
        "PYTHONUNBUFFERED": "1",
        "TMPDIR": str(workdir),
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def goals(results: list[dict], workers: list[int], checks: dict[int, dict]) -> dict[int, dict[str, Any]]:
    """Per worker count: the issue's absolute goals (single req/s and p99, batch rows/s and p99), zero
    errors, the log check, and how ours compares with MLflow serving our pyfunc and the plain booster."""
    out: dict[int, dict[str, Any]] = {}
    for n in workers:
        pick = {(r["server"], r["mode"]): r for r in results if r["workers"] == n}
        if ("ours", "single") not in pick:
            continue
        batch = next(m for _, m in pick if m != "single")
        single, rows = pick[("ours", "single")], pick[("ours", batch)]
        out[n] = {}
        for server, label in (("mlflow", "mlflow_pyfunc"), ("lightgbm", "plain_lightgbm"), ("floor", "http_floor")):
            if (server, "single") in pick:
                out[n][f"single_vs_{label}"] = float(f"{single['req_per_s'] / pick[(server, 'single')]['req_per_s']:.3g}")
                per = "req_per_s" if server == "floor" else "rows_per_s"  # the floor reads no row: requests
                out[n][f"batch_vs_{label}"] = float(f"{rows[per] / pick[(server, batch)][per]:.3g}")
        out[n].update({
            f"single_ge_{GOAL_SINGLE_REQ_S:.0f}_req_s": single["req_per_s"] >= GOAL_SINGLE_REQ_S,
            f"single_p99_le_{GOAL_SINGLE_P99_MS:g}ms": single["p99_ms"] <= GOAL_SINGLE_P99_MS,
            f"batch_ge_{GOAL_BATCH_ROWS_S:.0f}_rows_s": rows["rows_per_s"] >= GOAL_BATCH_ROWS_S,
            f"batch_p99_le_{GOAL_BATCH_P99_MS:g}ms": rows["p99_ms"] <= GOAL_BATCH_P99_MS,
            "zero_errors": single["errors"] == 0 and rows["errors"] == 0,
            "log_records_match": checks[n]["ok"],
        })
    return out


TABLE = [
    ("server", "<8", "", lambda r: r["server"]),
    ("workers", ">7", "", lambda r: r["workers"]),
    ("mode", "<9", "", lambda r: r["mode"]),
    ("req/s", ">7", ".0f", lambda r: r["req_per_s"]),
    ("rows/s", ">7", ".0f", lambda r: r["rows_per_s"]),
    ("p50 ms", ">7", ".2f", lambda r: r["p50_ms"]),
    ("p90 ms", ">7", ".2f", lambda r: r["p90_ms"]),
    ("p99 ms", ">7", ".2f", lambda r: r["p99_ms"]),
    ("max ms", ">7", ".1f", lambda r: r["max_ms"]),
    ("errors", ">6", "", lambda r: r["errors"]),
    ("srv cpu", ">7", ".2f", lambda r: r["cpu_cores"]["server"]),
    ("wrk cpu", ">7", ".2f", lambda r: r["cpu_cores"]["wrk"]),
    ("oth cpu", ">7", ".2f", lambda r: r["cpu_cores"]["other"]),
    ("tries", ">5", "", lambda r: r["tries"]),
]


def print_table(results: list[dict]) -> None:
    """One line per run; the cpu columns are cores kept busy by the server, wrk, everything else."""
    header = " ".join(f"{name:{width}}" for name, width, _, _ in TABLE)
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        print(" ".join(f"{get(r):{width}{kind}}" for _, width, kind, get in TABLE))


def print_stages(results: list[dict]) -> None:
    """Where our service's time per request went (ms), beside the latency wrk saw."""
    for r in results:
        split = r.get("stage_ms_per_request")
        if split:
            cpu = sum(v for k, v in split.items() if k != "log_wait")
            parts = ", ".join(f"{k} {v:.3f}" for k, v in split.items())
            print(f"ours w={r['workers']} {r['mode']}: {parts} ms per request (CPU in the service {cpu:.3f} ms; "
                  f"wrk's mean latency {r['mean_ms']:.2f} ms; resident memory {r['service_rss_mb']} MB; "
                  f"{r.get('requests_per_pass')} requests per scoring pass)")


def little(connections: int, rows: int) -> str:
    """What the latency goals imply: wrk keeps `connections` requests in flight, so the mean latency is
    connections / throughput (Little's law) and a p99 goal needs at least that much throughput."""
    single, batch = connections / (GOAL_SINGLE_P99_MS / 1000), connections / (GOAL_BATCH_P99_MS / 1000)
    return (f"with {connections} connections always in flight the mean latency is connections / throughput, so "
            f"p99 <= {GOAL_SINGLE_P99_MS:g} ms needs more than {single:,.0f} single req/s and p99 <= "
            f"{GOAL_BATCH_P99_MS:g} ms more than {batch * rows:,.0f} rows/s in {rows}-row batches")


def print_verdicts(verdicts: dict[int, dict[str, Any]], checks: dict[int, dict]) -> None:
    print()
    for n, v in verdicts.items():
        ratios = ", ".join(f"{k.replace('_vs_', ' vs ')} {x:.3g}x" for k, x in v.items() if "_vs_" in k)
        print(f"workers={n}: ours (req/s single, rows/s batch): {ratios or 'no reference measured'}")
        for k, ok in v.items():
            if isinstance(ok, bool):
                print(f"  goal {k}: {'met' if ok else 'not met'}")
        c = checks[n]
        print(
            f"  prediction log: {c['records']} records, all status 200: {c['records'] == c['status_200']}; "
            f"single {c['single']['records']} vs {c['single']['answered_rows']} answered "
            f"(+{c['single']['in_flight_at_stop']} in flight when wrk stopped), "
            f"batch rows {c['batch']['records']} vs {c['batch']['answered_rows']} "
            f"(+{c['batch']['in_flight_at_stop']})"
        )


def warn_if_shared(results: list[dict], busy_before: float) -> list[str]:
    """A busy neighbour (tests, builds) on a 2-core machine moves every figure: say so."""
    worst = max(r["cpu_cores"]["other"] for r in results)
    warnings = []
    if busy_before > BUSY_CORES:
        warnings.append(f"the machine was already busy before the benchmark ({busy_before:.2f} cores)")
    if worst > BUSY_CORES:
        warnings.append(f"other processes kept up to {worst:.2f} cores busy during a measured run")
    for text in warnings:
        print(f"WARNING: {text}; figures are not from an idle machine")
    return warnings


def wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip()


def settings(bench: Bench) -> dict[str, Any]:
    """What was measured and with what, for the JSON."""
    args = bench.args
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": {p: version(p) for p in ("mlflow", "lightgbm", "fastapi", "uvicorn", "pydantic")}
        | {"wrk": wrk_version()},
        "model": {"name": bench.champion.name, "version": bench.champion.version},
        "model_inputs": len(bench.champion.features),
        "load": {
            "tool": "wrk",
            "connections": args.connections,
            "threads": args.threads,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "distinct_single_bodies": args.flights,
            "distinct_batch_bodies": args.batches,
            "batch_size": args.batch_size,
        },
    }


NOTES = [
    "ours: the flight as a client knows it; online-store feature lookup and one prediction-log record "
    "per row (log in a temporary folder, counted after a clean stop)",
    "mlflow: `mlflow models serve --env-manager local` of the same version, sent the precomputed feature "
    "vector (dataframe_split): no lookup, no logging; its uvicorn access log is on (its default)",
    "lightgbm: the same booster saved with mlflow.lightgbm.save_model, served the same way, sent the vector as "
    "numbers (categories as level codes): the model's own cost plus MLflow's HTTP layer",
    "floor: a bare ASGI app that reads the body and answers a fixed JSON, under uvicorn with our service's "
    "settings, sent our bodies: what serving costs here before any work of the service's own",
    "wrk runs on the same machine and competes with the server for the same cores",
    "every wrk run starts once the server is idle again (the previous run's in-flight requests done)",
    f"with several workers, a run in which one worker got (nearly) no connection (worker_balance < "
    f"{MIN_BALANCE}) is run again, up to {MAX_TRIES} tries; the discarded runs are listed per result",
    "latencies are wrk's (no coordinated-omission correction); cpu_cores are cores kept busy during the "
    "measured run by the server's process group, by wrk, and by anything else on the machine",
]


def run(bench: Bench) -> tuple[list[dict], dict[int, dict]]:
    """Each worker count: ours, then MLflow; never both servers at once."""
    results: list[dict] = []
    checks: dict[int, dict] = {}
    for workers in bench.args.workers:
        print(f"workers={workers}", flush=True)
        servers = bench.args.servers
        if "ours" in servers:
            ours, checks[workers] = bench_ours(bench, workers)
            results += ours
        for server in ("mlflow", "lightgbm"):
            if server in servers:
                results += bench_mlflow(bench, workers, server)
        if "floor" in servers:
            results += bench_floor(bench, workers)
    return results, checks


def busy_cores(seconds: float = 1.0) -> float:
    """Cores the machine keeps busy right now, before we add load (a shared machine skews everything)."""
    before = machine_busy_seconds()
    time.sleep(seconds)
    return (machine_busy_seconds() - before) / seconds


def load_text(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def interrupted(signum: int, _frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every `finally` stops its server."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        fail("wrk is not installed; on Debian/Ubuntu: `sudo apt-get update && sudo apt-get install -y wrk`")
    signal.signal(signal.SIGTERM, interrupted)
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    started, state, load_before = time.perf_counter(), state_folder(), os.getloadavg()
    champion = find_champion(state)
    print(f"{champion.name} v{champion.version} from {champion.tracking_uri}", flush=True)
    busy_before = busy_cores()
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        workdir = Path(tmp)
        bench = Bench(args, state, champion, child_env(state, champion.tracking_uri, workdir), workdir)
        write_bodies(bench)
        results, checks = run(bench)
    verdicts = goals(results, args.workers, checks)
    print_table(results)
    print()
    print_stages(results)
    print_verdicts(verdicts, checks)
    print(f"note: {little(args.connections, args.batch_size)}")
    shared = warn_if_shared(results, busy_before)
    load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min) on {os.cpu_count()} CPUs: before {load_text(load_before)}, "
          f"after {load_text(load_after)}")
    report = {
        "benchmark": "serving",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **settings(bench),
        "notes": NOTES,
        "busy_cores_before": round(busy_before, 2),
        "load_average": {"before": load_text(load_before), "after": load_text(load_after)},
        "warnings": shared,
        "results": results,
        "goals": {str(n): v for n, v in verdicts.items()},
        "prediction_log": {str(n): c for n, c in checks.items()},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {RESULTS_PATH.relative_to(ROOT)} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
