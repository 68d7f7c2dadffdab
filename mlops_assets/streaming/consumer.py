"""The streaming consumer: input lines -> validated events -> the prediction service -> the sink.

Events are scored by the very `Service` the HTTP app runs (feature lookup, arms, governed models
from the registry watcher, the durable prediction log), `batch` events per call, as
`POST /v1/predict/batch` would. A part is committed only after the prediction log has answered for
its records, so every committed prediction is in the log (the `prediction_log` field says
`durable`, `queued` or `not-logged` as the `X-Prediction-Log` header would). A refused event (bad
JSON, a bad field, a category refused by the project, a model failure) is a dead-letter record
naming the field and a refusal in the prediction log, as the HTTP service logs its 4xx and 500.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pydantic_core
from pydantic import BaseModel, Field, StringConstraints, ValidationError, create_model

from mlops_assets.serving.errors import ClientError, body_problem, problems_of
from mlops_assets.serving.service import Service
from mlops_assets.serving.transport import INTERNAL_ERROR
from mlops_assets.streaming.sink import Sink
from mlops_assets.streaming.source import Line, read_lines

log = logging.getLogger(__name__)
ENDPOINT = "stream"
EVENT_ID = "event_id"
INSTANCE = re.compile(r"^instances\[(\d+)\]\.?(.*)$")
Scorable = tuple[Line, object, BaseModel]  # the line, its event id, the request instance
EventId = Annotated[str, StringConstraints(min_length=1, max_length=256)] | int


class LogUnavailable(Exception):
    """With `log_unavailable: refuse`, a part whose records the log could not write is not committed."""


def event_model(service: Service) -> type[BaseModel]:
    """The service's generated request model plus a required `event_id` (same strictness, same names)."""
    if EVENT_ID in service.project.request.fields:
        raise ValueError(f"the request field {EVENT_ID!r} clashes with the stream's event id")
    return create_model(f"{service.models.instance.__name__}Event", __base__=service.models.instance,
                        event_id=(EventId, Field(...)))


@dataclass
class Batch:
    """What one commit holds: output records, dead letters and the log's futures for both."""

    predictions: list[dict[str, object]] = field(default_factory=list)
    dead: list[dict[str, object]] = field(default_factory=list)
    futures: list[tuple[Future[bool] | None, list[dict[str, object]]]] = field(default_factory=list)


class Counts:
    """What a run did: the CLI's closing JSON summary."""

    def __init__(self) -> None:
        self.events = self.predictions = self.dead_letters = self.duplicates_skipped = self.parts = 0
        self.seconds = 0.0

    def summary(self) -> dict[str, object]:
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        return {**self.__dict__, "seconds": round(self.seconds, 3), "events_per_second": round(rate, 1)}


def _source(line: Line) -> dict[str, object]:
    return {"file": line.file, "offset": line.offset, "length": len(line.data)}


def _event_id(line: Line) -> object:
    """The event id of a refused line when it has one (for the dead-letter record)."""
    try:
        data = pydantic_core.from_json(line.data)
    except ValueError:
        return None
    value = data.get(EVENT_ID) if isinstance(data, dict) else None
    return value if isinstance(value, str | int) and len(str(value)) <= 256 else None


class Consumer:
    """Reads, scores and commits; `run` loops until the input ends (or forever with `follow`)."""

    def __init__(self, service: Service, source: Path, sink: Sink, batch: int = 100, part_events: int = 1000,
                 explain: bool = False) -> None:
        self.service, self.source, self.sink = service, source, sink
        self.batch, self.part_events, self.explain = batch, part_events, explain
        self.model = event_model(service)
        self.fields = list(service.models.instance.model_fields)
        self.limit = service.config.max_body_bytes
        self.counts = Counts()

    def run(self, follow: bool, max_events: int | None, poll_seconds: float, stop: threading.Event) -> Counts:
        started = time.perf_counter()
        while not stop.is_set():
            left = self.part_events if max_events is None else min(self.part_events, max_events - self.counts.events)
            if left <= 0:
                break
            if not self.step(left):
                if not follow:
                    break
                stop.wait(poll_seconds)
        self.counts.seconds = time.perf_counter() - started
        return self.counts

    def step(self, limit: int) -> bool:
        """One read and commit; False when there was nothing new to read."""
        read = read_lines(self.source, self.sink.offsets, limit, self.sink.skip)
        if not read.moved:
            return False
        batch = Batch()
        valid: list[Scorable] = []
        for line in read.lines:
            parsed = self._validate(line, batch)
            if parsed is not None:
                valid.append((line, *parsed))
        for start in range(0, len(valid), self.batch):
            self._score(valid[start:start + self.batch], batch)
        self._await_log(batch)
        parts = self.sink.parts
        self.sink.commit(batch.predictions, batch.dead, read.offsets)
        counts = self.counts
        counts.events += len(batch.predictions) + len(batch.dead)
        counts.predictions += len(batch.predictions)
        counts.dead_letters += len(batch.dead)
        counts.duplicates_skipped += read.skipped
        counts.parts += self.sink.parts - parts
        return True

    def _validate(self, line: Line, batch: Batch) -> tuple[object, BaseModel] | None:
        """The event id and the event as the service's request model, or None after its dead letter."""
        if len(line.data) > self.limit:
            self._refuse(line, 413, body_problem(f"line longer than the limit of {self.limit} bytes"), batch)
            return None
        try:
            event = self.model.model_validate_json(line.data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            if any(e["type"] == "json_invalid" for e in errors):
                self._refuse(line, 400, body_problem("line is not valid JSON"), batch)
            else:
                self._refuse(line, 422, problems_of(errors), batch)
            return None
        values: dict[str, Any] = {name: getattr(event, name) for name in self.fields}
        return event.event_id, self.service.models.instance.model_construct(**values)

    def _refuse(self, line: Line, status: int, problems: list[dict[str, str]] | str, batch: Batch,
                request_id: str | None = None, started: float | None = None) -> None:
        """A dead letter, and (for a refusal of its own) the log record the HTTP service would write."""
        if request_id is None:
            request_id = str(uuid.uuid4())
            future = self.service.log_refusal(request_id, ENDPOINT, status, problems, started or time.perf_counter())
            batch.futures.append((future, []))
        detail = problems if isinstance(problems, list) else [{"field": "body", "problem": problems}]
        batch.dead.append({EVENT_ID: _event_id(line), "request_id": request_id, "status": status,
                           "problems": detail, "source": _source(line)})

    def _score(self, chunk: list[Scorable], batch: Batch) -> None:
        """One predict call; instances the service refuses are dead letters and the rest is scored again."""
        request_id, started = str(uuid.uuid4()), time.perf_counter()
        instances = [instance for _, _, instance in chunk]
        try:
            answers, future = self.service.predict(instances, self.explain, request_id, ENDPOINT, started,
                                                   single=len(instances) == 1)
        except ClientError as exc:
            self._split_refusal(chunk, exc, request_id, started, batch)
            return
        except Exception:
            log.exception("prediction failed for request %s", request_id)
            future = self.service.log_refusal(request_id, ENDPOINT, 500, INTERNAL_ERROR, started)
            batch.futures.append((future, []))
            for line, _, _ in chunk:
                self._refuse(line, 500, INTERNAL_ERROR, batch, request_id)
            return
        records = []
        for i, ((line, event_id, _), answer) in enumerate(zip(chunk, answers, strict=True)):
            records.append({EVENT_ID: event_id, "request_id": request_id, "instance": i, **answer,
                            "source": _source(line)})
        batch.predictions.extend(records)
        batch.futures.append((future, records))

    def _split_refusal(self, chunk: list[Scorable], exc: ClientError, request_id: str,
                       started: float, batch: Batch) -> None:
        """Map `instances[i].field` problems to their events; the whole chunk when a problem names none."""
        batch.futures.append((self.service.log_refusal(request_id, ENDPOINT, exc.status, exc.problems, started), []))
        single = len(chunk) == 1
        by_index: dict[int, list[dict[str, str]]] = {}
        for problem in exc.problems:
            match = INSTANCE.match(problem["field"])
            index, name = (0, problem["field"]) if single else (
                (int(match.group(1)), match.group(2) or "body") if match else (-1, problem["field"]))
            by_index.setdefault(index, []).append({"field": name, "problem": problem["problem"]})
        if -1 in by_index:
            by_index = {i: by_index.get(i, by_index[-1]) for i in range(len(chunk))}
        for i, (line, _, _) in enumerate(chunk):
            if i in by_index:
                self._refuse(line, exc.status, by_index[i], batch, request_id)
        rest = [item for i, item in enumerate(chunk) if i not in by_index]
        if rest:
            self._score(rest, batch)

    def _await_log(self, batch: Batch) -> None:
        """Every record of the batch is durable (or the log says why not) before the part is committed."""
        ack = self.service.config.log_ack
        refuse = self.service.config.log_unavailable == "refuse"
        for future, records in batch.futures:
            written = future is not None and future.result()
            state = ("durable" if ack == "fsync" else "queued") if written else "not-logged"
            if refuse and state == "not-logged":
                raise LogUnavailable("the prediction log cannot be written (log_unavailable=refuse); "
                                     "nothing committed, the consumer resumes from its checkpoint on restart")
            for record in records:
                record["prediction_log"] = state
