"""Opportunistic batching: requests that are ready to score in the same event-loop turn are scored together.

While one pass scores, the requests of the other connections arrive; the next turn parses them all
and hands them over at once, so they share one lookup per view, one matrix per arm and one log
write (the fixed cost of a pass, ~1 ms, is paid once instead of per request). Nothing waits for a
batch to fill: an idle service scores a lone request in the turn after it arrives, as before. The
idea of TF Serving's and Triton's dynamic batching, without their timeout. Each request is still
answered, logged and refused as itself (`Service.predict_groups`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """Collects items submitted during one event-loop turn and scores them with one `score` call (up to
    `max_rows` rows a call; more wait for the next turn; `on_pass` hears each pass's size). `score` returns
    one result per item: a result, or an exception that is raised to that item's caller alone. When `score`
    itself raises, the pass's items are scored again one at a time, so a request that breaks the model
    fails alone and the others of its pass are answered."""

    def __init__(self, score: Callable[[list[Item]], list[Result | Exception]],
                 rows: Callable[[Item], int], max_rows: int, on_pass: Callable[[int], None] | None = None) -> None:
        self.score, self.rows, self.max_rows, self.on_pass = score, rows, max_rows, on_pass
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._scheduled = False
        self.passes = 0
        self.scored = 0

    def submit(self, item: Item) -> asyncio.Future[Result]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        taken, rows = 0, 0
        for item, _ in self._pending:
            rows += self.rows(item)
            if taken and rows > self.max_rows:
                break
            taken += 1
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        if self._pending:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        live = [(item, future) for item, future in batch if not future.cancelled()]
        if not live:
            return
        self.passes += 1
        self.scored += len(live)
        if self.on_pass is not None:
            self.on_pass(len(live))
        try:
            results = self.score([item for item, _ in live])
        except Exception as exc:  # scored again one by one: only the items that fail alone see an error
            results = [exc] if len(live) == 1 else [self._alone(item) for item, _ in live]
        for (_, future), result in zip(live, results, strict=True):
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _alone(self, item: Item) -> Result | Exception:
        try:
            return self.score([item])[0]
        except Exception as exc:  # raised to this item's caller, which reports it
            return exc
