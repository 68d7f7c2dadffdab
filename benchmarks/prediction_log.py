"""Prediction log and responsiveness benchmark: the real service as a subprocess, on a small flights
platform built here (six weeks of flights, two LightGBM versions in a SQLite registry; the serving
tests' fixtures), so it needs no `make run`.

1. kill -9 under load: concurrent clients post flights with their own request ids and remember every
   id answered 200; the server is killed with SIGKILL mid-load; every remembered id must be in the
   log on disk. With `log_ack=fsync` (the default) answers come after the group commit; the same
   trials with `log_ack=queued` (answer first, fsync every second: the old behaviour) show what the
   check catches. Goal: 0 acknowledged records lost over 10 fsync trials.
2. Durability cost: wrk req/s of POST /v1/predict with fsync vs queued. Goal: cost <= 10 %.
3. /health under 100-row explained batches: p99 of sequential GET /health while wrk posts explained
   batches. Goal: <= 20 ms.
4. Hot swaps: p99 of /v1/predict under wrk, steady and while the champion alias moves every 2 s.
   Goal: p99 during swaps <= 2x steady p99.

    .venv/bin/python benchmarks/prediction_log.py [--trials 10] [--duration 10]

Prints the figures with "goal met"/"not met" and writes benchmarks/results/prediction_log.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.serving import free_port, run_wrk, serving  # noqa: E402
from benchmarks.serving import http as fetch  # noqa: E402

RESULTS_PATH = ROOT / "benchmarks" / "results" / "prediction_log.json"
HOST = "127.0.0.1"
CLIENTS = 8
GOAL_COST, GOAL_HEALTH_P99_MS, GOAL_SWAP_RATIO = 0.10, 20.0, 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="kill -9 trials with log_ack=fsync")
    parser.add_argument("--queued-trials", type=int, default=3, help="the same with log_ack=queued")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


class Bench:
    """The platform, request bodies, and how to start the service on it."""

    def __init__(self, workdir: Path) -> None:
        from mlops_assets_tests.serving_fixtures import build_flights

        self.workdir = workdir
        self.platform = build_flights(workdir / "platform")
        self.instances = self.platform.requests(200)
        self.single = workdir / "single.jsonl"
        self.single.write_text("".join(json.dumps(i) + "\n" for i in self.instances[:32]))
        self.batch = workdir / "batch.jsonl"
        self.batch.write_text("".join(json.dumps({"instances": self.instances[k:k + 100]}) + "\n" for k in (0, 50, 100)))

    def env(self, name: str, **options: str) -> dict[str, str]:
        folder = self.workdir / name
        store = self.platform.store_copy(folder)
        values = {"STATE_DIR": str(folder), "PROJECT_PATH": str(self.platform.project_file),
                  "TRACKING_URI": self.platform.tracking_uri, "ONLINE_STORE_PATH": str(store),
                  "LOG_DIR": str(folder / "log"), "ALERTS_PATH": str(folder / "alerts.jsonl"),
                  "POLL_SECONDS": "60", **{k.upper(): v for k, v in options.items()}}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_SERVING_", "MLFLOW_"))}
        env.update({f"MLOPS_SERVING_{k}": v for k, v in values.items()}, PYTHONUNBUFFERED="1")
        return env

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "mlops_assets.serving", "--port", str(port), "--log-level", "warning"]


def ids_on_disk(log_dir: Path) -> set[str]:
    found = set()
    for path in log_dir.glob("date=*/part-*.jsonl"):
        data = path.read_bytes()
        for line in data[: data.rfind(b"\n") + 1].splitlines():
            found.add(json.loads(line)["request_id"])
    return found


def client_loop(port: int, prefix: str, bodies: list[bytes], acked: list[str], stop: threading.Event) -> None:
    """Post until the server dies; keep every request id answered 200."""
    conn, n = http.client.HTTPConnection(HOST, port, timeout=10), 0
    while not stop.is_set():
        rid = f"{prefix}-{n}"
        try:
            conn.request("POST", "/v1/predict", bodies[n % len(bodies)],
                         {"Content-Type": "application/json", "X-Request-ID": rid})
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            return
        if response.status == 200:
            acked.append(rid)
        n += 1


def kill_trial(bench: Bench, trial: int, ack: str) -> dict[str, int]:
    name = f"kill-{ack}-{trial}"
    env, port = bench.env(name, log_ack=ack), free_port()
    bodies = [json.dumps(i).encode() for i in bench.instances[:32]]
    acked: list[str] = []
    stop = threading.Event()
    with serving(bench.command(port), env, f"http://{HOST}:{port}/ready", bench.workdir, name) as pid:
        threads = [threading.Thread(target=client_loop, args=(port, f"{name}-c{c}", bodies, acked, stop))
                   for c in range(CLIENTS)]
        for thread in threads:
            thread.start()
        time.sleep(2.0 + (trial % 4) * 0.37)  # the load runs; the kill lands at a different moment each trial
        os.kill(pid, signal.SIGKILL)
        stop.set()
        for thread in threads:
            thread.join()
    on_disk = ids_on_disk(Path(env["MLOPS_SERVING_LOG_DIR"]))
    lost = [rid for rid in acked if rid not in on_disk]
    print(f"  {name}: {len(acked)} answered, {len(lost)} lost", flush=True)
    return {"answered": len(acked), "lost": len(lost)}


def wrk(url: str, bodies: Path, args: argparse.Namespace, connections: int | None = None) -> dict[str, Any]:
    options = argparse.Namespace(threads=min(args.threads, connections or args.connections),
                                 connections=connections or args.connections)
    raw = run_wrk(url, bodies, args.duration, options)
    errors = sum(raw["errors"].values())
    return {"req_per_s": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
            "p50_ms": raw["latency_us"]["p50"] / 1000, "p99_ms": raw["latency_us"]["p99"] / 1000, "errors": errors}


def durability_cost(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for ack in ("queued", "fsync") * 3:
        port = free_port()
        with serving(bench.command(port), bench.env(f"cost-{ack}", log_ack=ack), f"http://{HOST}:{port}/ready",
                     bench.workdir, f"cost-{ack}"):
            run_wrk(f"http://{HOST}:{port}/v1/predict", bench.single, 2, argparse.Namespace(threads=2, connections=8))
            result = wrk(f"http://{HOST}:{port}/v1/predict", bench.single, args)
        print(f"  log_ack={ack}: {result}", flush=True)
        out.setdefault(ack, []).append(result)
    best = {ack: max(runs, key=lambda r: r["req_per_s"]) for ack, runs in out.items()}
    cost = 1 - best["fsync"]["req_per_s"] / best["queued"]["req_per_s"]
    return {"runs": out, "best": best, "cost": round(cost, 3), "goal_met": cost <= GOAL_COST}


def health_under_batches(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    latencies: list[float] = []
    with serving(bench.command(port), bench.env("health"), f"http://{HOST}:{port}/ready", bench.workdir, "health"):
        done = threading.Event()

        def probe() -> None:
            conn = http.client.HTTPConnection(HOST, port, timeout=30)
            while not done.is_set():
                started = time.perf_counter()
                conn.request("GET", "/health")
                conn.getresponse().read()
                latencies.append((time.perf_counter() - started) * 1000)
                time.sleep(0.02)

        thread = threading.Thread(target=probe)
        thread.start()
        load = wrk(f"http://{HOST}:{port}/v1/predict/batch?explain=true", bench.batch, args, connections=2)
        done.set()
        thread.join()
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(f"  /health p99 {p99:.1f} ms over {len(latencies)} probes; batches {load}", flush=True)
    return {"health_p99_ms": round(p99, 2), "health_p50_ms": round(statistics.median(latencies), 2),
            "probes": len(latencies), "batches": load, "goal_met": p99 <= GOAL_HEALTH_P99_MS}


def hot_swaps(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    port, platform = free_port(), bench.platform
    platform.move("champion", "1")
    with serving(bench.command(port), bench.env("swaps", poll_seconds="0.5"), f"http://{HOST}:{port}/ready",
                 bench.workdir, "swaps"):
        url = f"http://{HOST}:{port}/v1/predict"
        run_wrk(url, bench.single, 2, argparse.Namespace(threads=2, connections=8))
        steady = wrk(url, bench.single, args)
        done, moves = threading.Event(), [0]

        def swap() -> None:
            while not done.wait(2.0):
                moves[0] += 1
                platform.move("champion", "2" if moves[0] % 2 else "1")

        thread = threading.Thread(target=swap)
        thread.start()
        during = wrk(url, bench.single, args)
        done.set()
        thread.join()
        swapped = fetch(f"http://{HOST}:{port}/metrics")[1].decode()
    count = next(int(float(line.split()[-1])) for line in swapped.splitlines() if line.startswith("mlops_serving_hot_swaps_total"))
    ratio = during["p99_ms"] / steady["p99_ms"]
    print(f"  steady {steady}; during {count} swaps {during}", flush=True)
    return {"steady": steady, "during_swaps": during, "swaps": count, "p99_ratio": round(ratio, 2),
            "goal_met": ratio <= GOAL_SWAP_RATIO and during["errors"] == 0}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="predlog-bench-") as tmp:
        bench = Bench(Path(tmp))
        print("kill -9 trials", flush=True)
        fsync = [kill_trial(bench, t, "fsync") for t in range(args.trials)]
        queued = [kill_trial(bench, t, "queued") for t in range(args.queued_trials)]
        print("durability cost", flush=True)
        cost = durability_cost(bench, args)
        print("/health under explained batches", flush=True)
        health = health_under_batches(bench, args)
        print("hot swaps", flush=True)
        swaps = hot_swaps(bench, args)
    lost = sum(t["lost"] for t in fsync)
    results = {
        "load_average_before": [round(x, 2) for x in load_before], "load_average_after":
            [round(x, 2) for x in os.getloadavg()], "cores": os.cpu_count(),
        "kill9": {"fsync": fsync, "queued": queued, "lost_acknowledged": lost, "goal_met": lost == 0},
        "durability_cost": cost, "health_under_batches": health, "hot_swaps": swaps,
    }
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
    verdict = {True: "goal met", False: "not met"}
    answered = sum(t["answered"] for t in fsync)
    print(f"\nload average before {results['load_average_before']}, after {results['load_average_after']}")
    print(f"kill -9, log_ack=fsync : {lost} of {answered} acknowledged records lost over {len(fsync)} trials "
          f"-> {verdict[lost == 0]} (goal 0)")
    print(f"kill -9, log_ack=queued: {sum(t['lost'] for t in queued)} of {sum(t['answered'] for t in queued)} "
          f"lost over {len(queued)} trials (the old behaviour, for comparison)")
    print(f"durability cost        : fsync {cost['best']['fsync']['req_per_s']} vs queued "
          f"{cost['best']['queued']['req_per_s']} req/s = {cost['cost']:.1%} -> {verdict[cost['goal_met']]} (goal <= 10 %)")
    print(f"/health p99 under explained 100-row batches: {health['health_p99_ms']} ms -> "
          f"{verdict[health['goal_met']]} (goal <= 20 ms)")
    print(f"hot swaps              : p99 steady {swaps['steady']['p99_ms']} ms, during {swaps['swaps']} swaps "
          f"{swaps['during_swaps']['p99_ms']} ms = {swaps['p99_ratio']}x -> {verdict[swaps['goal_met']]} (goal <= 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
