"""Streaming benchmark: `python -m mlops_assets.streaming` as a real process on the serving fixtures' flights
champion (a temporary SQLite registry, a real online store, the durable prediction log with fsync).

- throughput: N real served requests (repeated with fresh event ids) already in the input folder,
  consumed to the end with `--batch 100`; events/s from the consumer's own summary (after the model
  is loaded) and wall time of the whole process (interpreter start and model load included);
- end-to-end latency: the consumer follows the folder while a producer appends 100 events every
  `--interval` seconds; per event, from its line being written to the part holding its prediction
  being visible in the sink (a watcher polls the sink every 5 ms), p50/p99.

    .venv/bin/python benchmarks/streaming.py [--events 20000] [--seconds 10] [--interval 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT, machine_line, percentile, print_goals

from mlops_assets.streaming.sink import part_files

GOAL_EVENTS_PER_S = 2_000
GOAL_P99_MS = 500.0


def platform_env(work: Path) -> tuple[dict[str, str], list[dict[str, object]]]:
    """The flights fixture platform; the consumer's environment and the served requests."""
    sys.path.insert(0, str(ROOT))
    from mlops_assets_tests.serving_fixtures import build_flights

    platform = build_flights(work / "platform")
    config = platform.config(work / "service")
    names = ("state_dir", "project_path", "tracking_uri", "online_store_path", "log_dir", "poll_seconds",
             "alerts_path")
    env = {f"MLOPS_SERVING_{n.upper()}": str(getattr(config, n)) for n in names}
    env["MLOPS_SERVING_REGISTRY_URI"] = config.tracking_uri
    return {**os.environ, **env, "PYTHONPATH": str(ROOT)}, platform.requests(platform.served().height)


def command(source: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mlops_assets.streaming", "--in", str(source), "--out", str(out),
            "--batch", "100", *extra]


def throughput(env: dict[str, str], requests: list[dict[str, object]], events: int, work: Path) -> dict:
    source = work / "bulk_in"
    source.mkdir()
    for f in range(4):
        lines = (json.dumps({"event_id": f"t{i}", **requests[i % len(requests)]}) + "\n"
                 for i in range(f, events, 4))
        (source / f"events-{f}.jsonl").write_text("".join(lines))
    started = time.perf_counter()
    done = subprocess.run(command(source, work / "bulk_out"), env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    return {**json.loads(done.stdout.splitlines()[-1]), "wall_s": wall}


class Watcher(threading.Thread):
    """Polls the sink for new parts and stamps when each event's prediction became visible."""

    def __init__(self, out: Path) -> None:
        super().__init__(daemon=True)
        self.out, self.seen, self.visible = out, set[int](), dict[str, float]()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for seq, path in sorted(part_files(self.out).items()):
                if seq in self.seen:
                    continue
                now = time.time()
                self.seen.add(seq)
                for line in path.read_bytes().splitlines():
                    self.visible[json.loads(line)["event_id"]] = now
            self.stop.wait(0.005)


def latency(env: dict[str, str], requests: list[dict[str, object]], seconds: float, interval: float,
            work: Path) -> dict:
    source, out = work / "follow_in", work / "follow_out"
    source.mkdir()
    process = subprocess.Popen(command(source, out, "--follow", "--poll-seconds", "0.05"), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = Watcher(out)
    watcher.start()
    warm = {"event_id": "warm-up", **requests[0]}
    (source / "events-000.jsonl").write_text(json.dumps(warm) + "\n")
    deadline = time.monotonic() + 120
    while "warm-up" not in watcher.visible and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    written: dict[str, float] = {}
    n, end = 0, time.monotonic() + seconds
    with (source / "events-001.jsonl").open("a") as handle:
        while time.monotonic() < end:
            chunk = [{"event_id": f"l{n + i}", **requests[(n + i) % len(requests)]} for i in range(100)]
            handle.write("".join(json.dumps(e) + "\n" for e in chunk))
            handle.flush()
            stamp = time.time()
            written.update((str(e["event_id"]), stamp) for e in chunk)
            n += 100
            time.sleep(interval)
    while len(set(written) - set(watcher.visible)) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    watcher.stop.set()
    delays = [(watcher.visible[e] - t) * 1000 for e, t in written.items() if e in watcher.visible]
    return {"events": len(written), "delivered": len(delays), "p50_ms": percentile(delays, 50),
            "p99_ms": percentile(delays, 99), "max_ms": max(delays), "offered_per_s": 100 / interval}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between 100-event appends")
    args = parser.parse_args()
    print(f"streaming benchmark: {machine_line()}")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        env, requests = platform_env(work)
        bulk = throughput(env, requests, args.events, work)
        print(f"throughput: {bulk['events']:,} events (batch 100, parts of 1,000, log fsync) in "
              f"{bulk['seconds']:.2f} s = {bulk['events_per_second']:,.0f} events/s; process wall "
              f"{bulk['wall_s']:.2f} s with start-up ({bulk['events'] / bulk['wall_s']:,.0f} events/s)")
        lat = latency(env, requests, args.seconds, args.interval, work)
        print(f"latency: {lat['delivered']:,}/{lat['events']:,} events offered at {lat['offered_per_s']:,.0f}/s, "
              f"line written -> prediction visible in the sink p50 {lat['p50_ms']:.0f} ms, p99 "
              f"{lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms (idle poll 50 ms)")
    print(f"\nload average after: {machine_line()}")
    print_goals([(f">= {GOAL_EVENTS_PER_S:,} events/s at batch 100 ({bulk['events_per_second']:,.0f})",
                  bulk["events_per_second"] >= GOAL_EVENTS_PER_S),
                 (f"end-to-end p99 <= {GOAL_P99_MS:.0f} ms ({lat['p99_ms']:.0f} ms)", lat["p99_ms"] <= GOAL_P99_MS),
                 (f"every event delivered ({lat['delivered']:,}/{lat['events']:,})",
                  lat["delivered"] == lat["events"])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
