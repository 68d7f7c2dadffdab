"""The input: a folder of `*.jsonl` files, each line one request event, read by byte offset per file.

Files are read in name order, each from its own committed offset, so appends to any file (an
earlier one included) are picked up. Only complete lines count: a line without its newline is
still being written and waits. A file shorter than its committed offset was truncated or replaced;
guessing where to resume would lose or repeat events, so that is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PATTERN = "*.jsonl"


class InputError(Exception):
    """The input folder cannot be read consistently with the checkpoint."""


@dataclass(frozen=True)
class Line:
    """One complete line: its file name, the offset of its first byte, and its bytes (newline excluded)."""

    file: str
    offset: int
    data: bytes

    @property
    def position(self) -> tuple[str, int]:
        return self.file, self.offset


@dataclass
class Read:
    """Lines to process and the offsets once they (and the skipped ones) are done."""

    lines: list[Line]
    offsets: dict[str, int]
    skipped: int = 0

    @property
    def moved(self) -> bool:
        return bool(self.lines) or self.skipped > 0


def read_lines(root: Path, offsets: dict[str, int], limit: int, skip: set[tuple[str, int]]) -> Read:
    """Up to `limit` complete, non-blank lines after the offsets whose position is not in `skip`
    (already in the sink); the returned offsets move past every line read, skipped and blank ones too."""
    out = Read([], dict(offsets))
    for path in sorted(root.glob(PATTERN)):
        if len(out.lines) >= limit:
            break
        name = path.name
        start = out.offsets.get(name, 0)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        if size < start:
            raise InputError(f"{path} is {size} bytes, shorter than its committed offset {start} "
                             "(truncated or replaced); move it away or start a new --out")
        if size == start:
            continue
        with path.open("rb") as handle:
            handle.seek(start)
            position = start
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break
                here, position = position, position + len(raw)
                if (name, here) in skip:
                    out.skipped += 1
                elif raw.strip():
                    out.lines.append(Line(name, here, raw.rstrip(b"\r\n")))
                out.offsets[name] = position
                if len(out.lines) >= limit:
                    break
    return out
