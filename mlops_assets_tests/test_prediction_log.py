"""The prediction log is durable before a request is answered, and survives a full disk and a deleted
folder: real service (TestClient), real registry, a real small tmpfs as the full disk (root only)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from mlops_assets.serving.app import create_app
from mlops_assets.serving.predlog import PredictionLog
from mlops_assets_tests.serving_fixtures import (
    Platform,
    eventually,
    log_lines,
    shared_flights_fixture,  # noqa: F401 - registers it
)


@pytest.fixture()
def flights(shared_flights: Platform) -> Platform:
    shared_flights.move("champion", "1")
    return shared_flights



@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that really fills up (ENOSPC from the kernel, nothing injected)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a filler file until the kernel says the disk is full."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle:
        while True:
            try:
                handle.write(b"x" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return filler


def ids_on_disk(log_dir: Path) -> Counter[str]:
    files = sorted(log_dir.glob("date=*/part-*.jsonl"))
    return Counter(json.loads(line)["request_id"] for path in files for line in path.read_text().splitlines())


def test_an_answer_comes_only_after_its_record_is_on_disk(flights: Platform, tmp_path: Path) -> None:
    config = flights.config(tmp_path, log_flush_seconds=3600.0)
    instances = flights.requests(6)
    with TestClient(create_app(config)) as client:
        for instance in instances[:3]:
            response = client.post("/v1/predict", json=instance)
            assert response.headers["x-prediction-log"] == "durable"
            assert response.json()["request_id"] in {r["request_id"] for r in log_lines(config)}
        batch = client.post("/v1/predict/batch", json={"instances": instances})
        refused = client.post("/v1/predict", json={**instances[0], "origin": "BOS"})
        on_disk = Counter(r["request_id"] for r in log_lines(config))
        assert on_disk[batch.json()["request_id"]] == 6 and on_disk[refused.json()["request_id"]] == 1
        assert refused.status_code == 422 and refused.headers["x-prediction-log"] == "durable"


def test_a_full_disk_degrades_the_service_which_writes_every_record_once_space_returns(
        flights: Platform, tmp_path: Path, small_disk: Path) -> None:
    alerts = tmp_path / "alerts.jsonl"
    config = flights.config(tmp_path, log_dir=small_disk / "log", alerts_path=alerts)
    instances = flights.requests(40)
    with TestClient(create_app(config)) as client:
        answered = [client.post("/v1/predict", json=instances[0]).json()["request_id"]]
        filler = fill(small_disk)
        during = [client.post("/v1/predict/batch", json={"instances": instances[i:i + 10]}) for i in range(0, 40, 10)]
        assert [r.status_code for r in during] == [200] * 4
        assert {r.headers["x-prediction-log"] for r in during} == {"not-logged"}
        assert client.get("/ready").status_code == 503
        health = client.get("/health").json()
        assert health["status"] == "degraded" and "No space left" in health["prediction_log"]["reason"]
        assert "mlops_serving_prediction_log_degraded 1" in client.get("/metrics").text
        assert eventually(lambda: alerts.exists() and "cannot be written" in alerts.read_text())
        filler.unlink()
        assert eventually(lambda: client.get("/ready").status_code == 200)
        after = client.post("/v1/predict", json=instances[1])
        assert after.headers["x-prediction-log"] == "durable"
        answered += [r.json()["request_id"] for r in during] + [after.json()["request_id"]]
        assert eventually(lambda: "writes again" in alerts.read_text())
    counts = ids_on_disk(config.prediction_log_dir)
    assert {rid: counts[rid] for rid in answered} == {answered[0]: 1, **{rid: 10 for rid in answered[1:5]},
                                                      answered[5]: 1}
    assert sum(counts.values()) == 42


def test_with_refuse_a_full_disk_answers_503_until_space_returns(flights: Platform, tmp_path: Path,
                                                                small_disk: Path) -> None:
    config = flights.config(tmp_path, log_dir=small_disk / "log", log_unavailable="refuse",
                            alerts_path=tmp_path / "alerts.jsonl")
    instance = flights.requests(1)[0]
    with TestClient(create_app(config)) as client:
        filler = fill(small_disk)
        first = client.post("/v1/predict", json=instance)
        assert first.status_code == 503 and "prediction log cannot be written" in first.json()["detail"]
        assert client.post("/v1/predict", json=instance).status_code == 503
        filler.unlink()
        assert eventually(lambda: client.get("/ready").status_code == 200)
        assert client.post("/v1/predict", json=instance).status_code == 200


def test_a_deleted_log_folder_is_recreated_and_loses_no_later_record(flights: Platform, tmp_path: Path) -> None:
    config = flights.config(tmp_path)
    instances = flights.requests(10)
    with TestClient(create_app(config)) as client:
        before = [client.post("/v1/predict", json=i).json()["request_id"] for i in instances[:5]]
        assert set(before) <= set(ids_on_disk(config.prediction_log_dir))
        shutil.rmtree(config.prediction_log_dir)
        after = [client.post("/v1/predict", json=i) for i in instances[5:]]
        assert {r.headers["x-prediction-log"] for r in after} == {"durable"}
        text = client.get("/metrics").text
    counts = ids_on_disk(config.prediction_log_dir)
    assert {r.json()["request_id"] for r in after} == set(counts) and set(counts.values()) == {1}
    assert "mlops_serving_prediction_log_records_total 10" in text


def test_a_batch_cut_by_a_full_disk_is_written_once_and_in_order(tmp_path: Path, small_disk: Path) -> None:
    """The write that hits ENOSPC mid-batch is truncated away; the retry writes the batch exactly once."""
    changes: list[bool] = []
    plog = PredictionLog(small_disk / "log", on_change=lambda failing, _: changes.append(failing))
    plog.start()
    first = plog.submit([{"request_id": "r0", "timestamp": "2013-02-10T00:00:00+00:00"}])
    assert first.result(timeout=30)
    filler = fill(small_disk)
    filler.write_bytes(b"x" * (filler.stat().st_size - 2000))
    records = [{"request_id": f"r{i}", "timestamp": "2013-02-10T00:00:00+00:00", "pad": "p" * 400}
               for i in range(1, 101)]
    futures = [plog.submit(records[i:i + 25]) for i in range(0, 100, 25)]
    assert [f.result(timeout=30) for f in futures] == [False] * 4 and plog.degraded
    filler.unlink()
    assert eventually(lambda: not plog.degraded)
    plog.close()
    lines = [json.loads(line) for path in sorted((small_disk / "log").rglob("*.jsonl"))
             for line in path.read_text().splitlines()]
    assert [r["request_id"] for r in lines] == [f"r{i}" for i in range(101)]
    assert changes == [True, False] and plog.written == 101 and plog.backlog == 0


def test_in_fsync_mode_each_write_is_synchronous_and_a_replaced_part_is_rewritten(tmp_path: Path) -> None:
    """fsync mode writes O_DSYNC (the write returns once data and size are on disk: one system call where a
    write and an fdatasync were two); queued mode does not. The part's identity is taken at open, so a part
    replaced under the writer is noticed and the next batch goes to a new part."""
    import fcntl

    for ack, synchronous in (("fsync", True), ("queued", False)):
        plog = PredictionLog(tmp_path / ack, ack=ack)  # type: ignore[arg-type]
        plog.start()
        assert plog.submit([{"request_id": "r0", "timestamp": "2013-02-10T00:00:00+00:00"}]).result(timeout=30)
        assert eventually(lambda plog=plog: plog.written == 1)
        part = plog._part
        assert part is not None
        assert bool(fcntl.fcntl(part.fd, fcntl.F_GETFL) & os.O_DSYNC) is synchronous, ack
        if synchronous:
            first = part.path
            first.rename(first.with_suffix(".moved"))
            first.write_bytes(b"")  # another file under the part's name
            assert plog.submit([{"request_id": "r1", "timestamp": "2013-02-10T00:00:00+00:00"}]).result(timeout=30)
            assert plog._part is not None and plog._part.path != first
        plog.close()
    lines = [json.loads(line)["request_id"] for path in sorted((tmp_path / "fsync").rglob("*.jsonl"))
             for line in path.read_text().splitlines()]
    assert lines == ["r1"], "r1 rewritten to a new part (the replaced name holds an empty file)"
    assert [json.loads(line)["request_id"] for path in (tmp_path / "fsync").rglob("*.moved")
            for line in path.read_text().splitlines()] == ["r0", "r1"]


def test_kill_9_loses_no_answered_prediction(flights: Platform, tmp_path: Path) -> None:
    """The real service as a process, four concurrent clients, SIGKILL right after an answer: every
    request answered 200 is on disk (the answer is sent only after the record's fdatasync)."""
    config = flights.config(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_SERVING_", "MLFLOW_"))}
    env.update({f"MLOPS_SERVING_{k.upper()}": str(getattr(config, k)) for k in
                ("state_dir", "project_path", "tracking_uri", "online_store_path", "log_dir", "poll_seconds")})
    server = subprocess.Popen([sys.executable, "-m", "mlops_assets.serving", "--port", str(port), "--log-level",
                               "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base, instances = f"http://127.0.0.1:{port}", flights.requests(8)

    def answered(worker: int) -> list[str]:
        ids = []
        with httpx.Client(base_url=base, timeout=30, trust_env=False) as client:
            for n in range(1_000_000):
                try:
                    response = client.post("/v1/predict", json=instances[n % 8])
                except httpx.HTTPError:
                    return ids
                if response.status_code == 200:
                    ids.append(response.json()["request_id"])
                if worker == 0 and n == 40:
                    os.kill(server.pid, signal.SIGKILL)
        return ids

    try:
        assert eventually(lambda: server.poll() is None and _ready(base), timeout=120), "service did not start"
        with ThreadPoolExecutor(4) as pool:
            acknowledged = [rid for ids in pool.map(answered, range(4)) for rid in ids]
    finally:
        server.kill()
        server.wait(timeout=30)
    assert server.returncode == -signal.SIGKILL and len(acknowledged) > 40
    assert set(acknowledged) <= set(ids_on_disk(config.prediction_log_dir))


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/ready", timeout=5, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def test_logged_inputs_read_as_pydantic_json_mode_writes_them() -> None:
    """An instance's values are its model_dump(). The log writes an instance's validated inputs from their Python form (orjson, UTC as Z): the same
    text pydantic's JSON mode gives, for UTC, other zones, offsets of whole minutes and fractions of a
    second. An offset with seconds (local mean time before 1900s standard zones) is dumped by pydantic."""
    from datetime import UTC, datetime, timedelta, timezone
    from zoneinfo import ZoneInfo

    import orjson

    from mlops_assets.project.loading import load_project
    from mlops_assets.serving.encoding import encode_record
    from mlops_assets.serving.schemas import request_models
    from mlops_assets.serving.service import _values, _whole_minutes

    project = load_project(Path(__file__).parents[1] / "projects" / "flights" / "project.yaml").spec
    model = request_models(project, 10).instance
    time_field = project.request.time
    base = {"carrier": "UA", "flight": 1545, "origin": "EWR", "dest": "IAH", "distance": 1400.0}
    moments = [datetime(2013, 11, 1, 21, 40, tzinfo=UTC), datetime(2013, 11, 1, 21, 40, 0, 123000, tzinfo=UTC),
               datetime(2013, 3, 10, 3, 0, tzinfo=ZoneInfo("America/New_York")),
               datetime(2013, 1, 1, 12, 0, 0, 500, tzinfo=timezone(timedelta(hours=5, minutes=30))),
               datetime(1901, 1, 1, tzinfo=timezone(-timedelta(hours=5, minutes=17, seconds=32)))]
    for moment in moments:
        instance = model.model_validate({**base, time_field: moment})
        python, expected = _values(instance), instance.model_dump(mode="json")
        assert python == instance.model_dump()
        logged = python if _whole_minutes(python[time_field]) else expected
        assert orjson.loads(encode_record({"inputs": logged}))["inputs"] == expected, moment
    assert not _whole_minutes(moments[-1]) and all(_whole_minutes(m) for m in moments[:-1])
