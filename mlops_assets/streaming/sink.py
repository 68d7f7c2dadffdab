"""The sink and its checkpoint: exactly one output record per input event across kill -9 and restarts.

A commit writes the batch's parts, each to a temporary name, fsynced, renamed into place and the
folder fsynced: `part-<seq>.jsonl` (predictions) and `dead_letter/part-<seq>.jsonl` (refused
events). A part that has its final name is complete and never changes. Then the checkpoint
(`_checkpoint.json`: the last committed seq and every input file's byte offset) is written the same
way. Every output record names the input position it came from (`source.file`, `source.offset`).

A crash after a part's rename and before the checkpoint leaves parts newer than the checkpoint.
On restart those parts stay as they are, and their records' input positions are skipped when the
consumer re-reads from the checkpoint's offsets: nothing is lost (what was not in a part is read
again) and nothing is repeated (what was in a part is skipped). Positions rather than `event_id`s
identify an event, because an unparsable line has no `event_id`. Temporary files are never
visible under a part name, so a crash mid-write leaves nothing a reader could take for output.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mlops_assets.serving.partfiles import fsync_dir, write_all

CHECKPOINT = "_checkpoint.json"
DEAD_LETTER = "dead_letter"
PART = re.compile(r"^part-(\d{8})\.jsonl$")
TMP_PREFIX = ".tmp-"
COMPACT = (",", ":")


class SinkError(Exception):
    """The output folder belongs to another input or holds an unreadable checkpoint."""


def part_name(seq: int) -> str:
    return f"part-{seq:08d}.jsonl"


def write_atomically(path: Path, data: bytes) -> None:
    """Temporary file, fsync, rename over `path`: readers see all of it or nothing."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def encode(records: list[dict[str, object]]) -> bytes:
    return b"".join((json.dumps(r, separators=COMPACT, default=str) + "\n").encode() for r in records)


def part_files(folder: Path) -> dict[int, Path]:
    """Committed part files of a folder by seq."""
    if not folder.is_dir():
        return {}
    return {int(m.group(1)): p for p in folder.iterdir() if (m := PART.match(p.name))}


@dataclass
class Sink:
    """The output folder: committed seq (`last`: the newest part on disk), input offsets, and the input
    positions of parts past the checkpoint."""

    root: Path
    source: Path
    seq: int = 0
    last: int = 0
    offsets: dict[str, int] = field(default_factory=dict)
    skip: set[tuple[str, int]] = field(default_factory=set)
    parts: int = 0

    @classmethod
    def open(cls, root: Path, source: Path) -> Sink:
        """Load the checkpoint, drop temporary files, and recover the positions of uncommitted parts."""
        (root / DEAD_LETTER).mkdir(parents=True, exist_ok=True)
        for folder in (root, root / DEAD_LETTER):
            for stale in folder.glob(f"{TMP_PREFIX}*"):
                stale.unlink()
        sink = cls(root, source.resolve())
        checkpoint = root / CHECKPOINT
        if checkpoint.exists():
            try:
                state = json.loads(checkpoint.read_text())
                sink.seq, sink.offsets = int(state["seq"]), {str(k): int(v) for k, v in state["offsets"].items()}
                recorded = str(state["input"])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise SinkError(f"{checkpoint} is not a checkpoint this consumer wrote ({exc})") from None
            if recorded != str(sink.source):
                raise SinkError(f"{root} holds the output of {recorded}, not of {sink.source}; use another --out")
        sink._recover()
        return sink

    def _recover(self) -> None:
        newer = [p for folder in (self.root, self.root / DEAD_LETTER)
                 for seq, p in part_files(folder).items() if seq > self.seq]
        for path in newer:
            for line in path.read_bytes().splitlines():
                source = json.loads(line)["source"]
                self.skip.add((source["file"], int(source["offset"])))
        every = [*part_files(self.root), *part_files(self.root / DEAD_LETTER), self.seq]
        self.last = max(every)

    def commit(self, predictions: list[dict[str, object]], dead: list[dict[str, object]],
               offsets: dict[str, int]) -> None:
        """Parts first (each atomic), then the checkpoint; a batch with no record only moves the offsets."""
        seq = self.last + 1 if predictions or dead else self.last
        for folder, records in ((self.root / DEAD_LETTER, dead), (self.root, predictions)):
            if records:
                write_atomically(folder / part_name(seq), encode(records))
                fsync_dir(folder)
                self.parts += 1
        state = {"seq": seq, "offsets": offsets, "input": str(self.source)}
        write_atomically(self.root / CHECKPOINT, json.dumps(state, indent=1).encode())
        fsync_dir(self.root)
        self.seq = self.last = seq
        self.offsets = dict(offsets)
        self.skip = {(f, o) for f, o in self.skip if o >= offsets.get(f, 0)}


def read_sink(root: Path, dead_letter: bool = False) -> list[dict[str, object]]:
    """Every committed record of the sink (or its dead-letter folder), in part order."""
    folder = root / DEAD_LETTER if dead_letter else root
    parts = part_files(folder)
    return [json.loads(line) for seq in sorted(parts) for line in parts[seq].read_bytes().splitlines()]
