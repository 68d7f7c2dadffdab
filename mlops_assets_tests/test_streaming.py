"""Streaming inference against real components: the flights champion in a real SQLite MLflow registry,
a real online store, the service object the HTTP app runs, its durable prediction log, and the consumer
as a real subprocess killed with SIGKILL mid-stream and restarted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mlops_assets.serving.app import create_app
from mlops_assets.serving.config import ServingConfig
from mlops_assets.serving.service import Service
from mlops_assets.streaming.__main__ import main
from mlops_assets.streaming.consumer import Consumer, Counts
from mlops_assets.streaming.sink import CHECKPOINT, Sink, part_files, read_sink
from mlops_assets_tests.serving_fixtures import (
    GOOD,
    Platform,
    build_weather,
    log_lines,
    shared_flights_fixture,  # noqa: F401 - registers it
)

ROOT = Path(__file__).resolve().parent.parent
ANSWER_ONLY = {"event_id", "request_id", "instance", "source", "prediction_log"}
MALFORMED = [  # (line, the field its dead letter must name)
    ('{"event_id": "bad-json", "carrier": ', "body"),
    (json.dumps(GOOD), "event_id"),
    (json.dumps({**GOOD, "event_id": "bad-origin", "origin": "BOS"}), "origin"),
    (json.dumps({**GOOD, "event_id": "bad-distance", "distance": "far"}), "distance"),
    (json.dumps({**GOOD, "event_id": "unknown-field", "sched": 1}), "sched"),
    ("[1, 2]", "body"),
]


@pytest.fixture()
def flights(shared_flights: Platform) -> Platform:
    shared_flights.move("champion", "1")
    return shared_flights


def environment(config: ServingConfig) -> dict[str, str]:
    """The serving configuration as the `MLOPS_SERVING_*` variables a consumer process reads."""
    names = ("state_dir", "project_path", "tracking_uri", "online_store_path", "log_dir", "poll_seconds",
             "log_flush_seconds", "alerts_path")
    env = {f"MLOPS_SERVING_{n.upper()}": str(getattr(config, n)) for n in names}
    return {**env, "MLOPS_SERVING_REGISTRY_URI": config.tracking_uri}


def write_events(folder: Path, events: list[dict[str, object]], files: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(events) // files)
    for n in range(files):
        chunk = events[n * size:(n + 1) * size]
        (folder / f"events-{n:03d}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in chunk))


def with_ids(requests: list[dict[str, object]], prefix: str) -> list[dict[str, object]]:
    return [{"event_id": f"{prefix}-{i}", **r} for i, r in enumerate(requests)]


@dataclass
class Streamed:
    config: ServingConfig
    requests: list[dict[str, object]]
    out: Path
    counts: Counts
    first: Counts


@pytest.fixture(scope="module")
def streamed(shared_flights: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Streamed]:
    """300 real served requests (and the malformed lines) through one consumer on the service object;
    the first run stops after 120 events, the second resumes from the checkpoint."""
    shared_flights.move("champion", "1")
    root = tmp_path_factory.mktemp("streamed")
    config = shared_flights.config(root / "service")
    requests = shared_flights.requests(300, offset=50)
    events = with_ids(requests, "e")
    write_events(root / "in", events[:150], 1)
    lines = [json.dumps(e) for e in events[150:]]
    for n, (line, _) in enumerate(MALFORMED):
        lines.insert(20 * n + 7, line)
    lines.insert(3, "   ")
    (root / "in" / "events-001.jsonl").write_text("\n".join(lines) + "\n" + json.dumps(GOOD)[:30])
    service = Service(config)
    service.start()
    try:
        stop = threading.Event()
        first = Consumer(service, root / "in", Sink.open(root / "out", root / "in")).run(False, 120, 0.1, stop)
        counts = Consumer(service, root / "in", Sink.open(root / "out", root / "in")).run(False, None, 0.1, stop)
    finally:
        service.stop()
    yield Streamed(config, requests, root / "out", counts, first)


def test_streamed_predictions_equal_the_http_service_answers(streamed: Streamed, flights: Platform,
                                                             tmp_path: Path) -> None:
    records = read_sink(streamed.out)
    assert [r["event_id"] for r in records] == [f"e-{i}" for i in range(300)]
    assert streamed.first.events == 120 and streamed.counts.predictions == 180
    with TestClient(create_app(flights.config(tmp_path))) as client:
        answers = []
        for start in range(0, 300, 100):
            response = client.post("/v1/predict/batch", json={"instances": streamed.requests[start:start + 100]})
            assert response.status_code == 200, response.text
            answers += response.json()["predictions"]
    for record, answer in zip(records, answers, strict=True):
        assert {k: v for k, v in record.items() if k not in ANSWER_ONLY} == answer
        assert record["model"] == {"name": flights.model_name, "version": "1"}
        assert record["prediction_log"] == "durable"
    assert len({r["request_id"] for r in records}) >= 3  # batched: at most 100 events per predict call


def test_malformed_events_are_dead_letters_naming_the_field(streamed: Streamed) -> None:
    dead = read_sink(streamed.out, dead_letter=True)
    assert [d["problems"][0]["field"] for d in dead] == [field for _, field in MALFORMED]
    assert [d["event_id"] for d in dead] == [None, None, "bad-origin", "bad-distance", "unknown-field", None]
    assert all(d["status"] in (400, 422) and d["source"]["file"] == "events-001.jsonl" for d in dead)
    assert streamed.counts.dead_letters == len(MALFORMED) and streamed.counts.events == 180 + len(MALFORMED)
    logged = {r["request_id"]: r for r in log_lines(streamed.config)}
    assert all(logged[d["request_id"]]["status"] == d["status"] for d in dead)


def test_every_streamed_prediction_is_in_the_prediction_log(streamed: Streamed) -> None:
    logged = {(r["request_id"], r["instance"]): r for r in log_lines(streamed.config) if r["status"] == 200}
    records = read_sink(streamed.out)
    for record in records:
        entry = logged[(record["request_id"], record["instance"])]
        assert entry["endpoint"] == "stream" and entry["model_version"] == record["model"]["version"]
        assert entry["probability"] == record["probability"]
        assert entry["inputs"]["flight"] == streamed.requests[int(str(record["event_id"])[2:])]["flight"]
    assert len(logged) == len(records)


def test_a_part_committed_without_its_checkpoint_is_not_repeated(streamed: Streamed, tmp_path: Path) -> None:
    """The disk as a kill between a part's rename and the checkpoint's leaves it: the part is kept and
    its events are skipped on restart, the rest is scored once."""
    source = tmp_path / "in"
    shutil.copytree(streamed.out.parent / "in", source)
    out = tmp_path / "out"
    service = Service(streamed.config.model_copy(update={"log_dir": tmp_path / "log"}))
    service.start()
    try:
        stop = threading.Event()
        Consumer(service, source, Sink.open(out, source), part_events=100).run(False, 100, 0.1, stop)
        before = (out / CHECKPOINT).read_bytes()
        Consumer(service, source, Sink.open(out, source), part_events=100).run(False, 100, 0.1, stop)
        (out / CHECKPOINT).write_bytes(before)
        assert len(part_files(out)) == 2
        again = Consumer(service, source, Sink.open(out, source), part_events=100).run(False, None, 0.1, stop)
    finally:
        service.stop()
    assert again.duplicates_skipped == 100
    assert [r["event_id"] for r in read_sink(out)] == [f"e-{i}" for i in range(300)]
    dead = [(d["source"]["file"], d["source"]["offset"]) for d in read_sink(out, dead_letter=True)]
    assert len(dead) == len(set(dead)) == len(MALFORMED)


def test_consumer_killed_mid_stream_and_restarted_outputs_every_event_once(flights: Platform,
                                                                             tmp_path: Path) -> None:
    requests = flights.requests(1200)
    events = with_ids(requests, "a") + with_ids(requests, "b")
    write_events(tmp_path / "in", events, 3)
    config = flights.config(tmp_path / "service")
    env = {**os.environ, **environment(config), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "mlops_assets.streaming", "--in", str(tmp_path / "in"),
               "--out", str(tmp_path / "out"), "--part-events", "150", "--batch", "50"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while committed(tmp_path / "out") < 900 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 900 <= committed(tmp_path / "out") < len(events)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    seen = Counter(r["event_id"] for r in read_sink(tmp_path / "out"))
    assert set(seen) == {e["event_id"] for e in events} and set(seen.values()) == {1}
    assert summary["events"] < len(events) and not read_sink(tmp_path / "out", dead_letter=True)
    logged = {(r["request_id"], r["instance"]) for r in log_lines(config) if r["status"] == 200}
    assert {(r["request_id"], r["instance"]) for r in read_sink(tmp_path / "out")} <= logged


def test_categories_the_model_refuses_are_dead_letters_and_the_rest_is_scored(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """`unknown_categories: refuse` (weather): the service refuses the whole batch naming instances[i];
    the consumer dead-letters those events and scores the others in a new call."""
    _, kind = build_weather(tmp_path_factory.mktemp("weather"))
    root = tmp_path_factory.mktemp("kinds")
    requests = kind.requests(kind.served().height)
    seattle = [r for r in requests if r["location"] == "Seattle"][:45]
    elsewhere = [r for r in requests if r["location"] != "Seattle"][:15]
    events = with_ids([r for pair in zip(seattle[::3], seattle[1::3], seattle[2::3], elsewhere, strict=True)
                       for r in pair], "w")
    write_events(root / "in", events, 1)
    config = kind.config(root / "service")
    service = Service(config)
    service.start()
    try:
        Consumer(service, root / "in", Sink.open(root / "out", root / "in"), batch=25).run(
            False, None, 0.1, threading.Event())
    finally:
        service.stop()
    unseen = {e["event_id"] for e in events if e["location"] != "Seattle"}
    dead, records = read_sink(root / "out", dead_letter=True), read_sink(root / "out")
    assert unseen and {d["event_id"] for d in dead} == unseen and len(dead) == len(unseen)
    assert all(d["problems"][0]["field"] == "location" and "unknown value" in d["problems"][0]["problem"]
               for d in dead)
    assert sorted(r["event_id"] for r in records) == sorted(e["event_id"] for e in events if e["event_id"] not in unseen)
    assert all(sum(r["probabilities"].values()) == pytest.approx(1.0) for r in records)
    refusals = {r["request_id"] for r in log_lines(config) if r["status"] == 422}
    assert {d["request_id"] for d in dead} <= refusals


def committed(out: Path) -> int:
    """Events in committed parts so far (a part is complete once it has its name)."""
    try:
        return sum(p.read_bytes().count(b"\n") for p in part_files(out).values())
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize(("args", "message"), [
    (["--in", "/no/such/folder", "--out", "x"], "not a folder"),
    (["--in", ".", "--out", "./sub"], "inside it"),
    (["--in", ".", "--out", "o", "--max-events", "0"], "must be positive"),
    (["--in", ".", "--out", "o", "--batch", "many"], "not a number"),
    (["--out", "o"], "--in"),
])
def test_bad_arguments_are_one_line_errors(args: list[str], message: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_an_output_folder_of_another_input_is_refused(streamed: Streamed, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in environment(streamed.config).items():
        monkeypatch.setenv(name, value)
    (tmp_path / "other").mkdir()
    with pytest.raises(SystemExit) as exited:
        main(["--in", str(tmp_path / "other"), "--out", str(streamed.out)])
    assert exited.value.code == 2 and "holds the output of" in capsys.readouterr().err
