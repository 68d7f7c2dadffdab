"""The prediction log's files at the system-call level: an append-only part file that knows whether its
path still names it, an os.write loop that reports how far it got, a directory sync."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Part:
    """The open part file of one day: descriptor, size (the undo point) and identity (to spot a deletion)."""

    day: str
    path: Path
    fd: int
    size: int = 0
    records: int = 0
    identity: tuple[int, int] = (-1, -1)  # (st_dev, st_ino) of the open file: it cannot change while open

    @classmethod
    def opened(cls, day: str, path: Path, fd: int) -> Part:
        mine = os.fstat(fd)
        return cls(day, path, fd, mine.st_size, identity=(mine.st_dev, mine.st_ino))

    def linked(self) -> bool:
        """The path still names this very file (not deleted, not replaced by another): one stat of the path,
        compared with the identity taken at open."""
        try:
            on_disk = os.stat(self.path)
        except OSError:
            return False
        return (on_disk.st_dev, on_disk.st_ino) == self.identity


def write_all(fd: int, data: bytes) -> None:
    """os.write until everything is written; the error carries how many bytes made it (`written`)."""
    view, done = memoryview(data), 0
    while done < len(view):
        try:
            done += os.write(fd, view[done:])
        except OSError as exc:
            exc.written = done  # type: ignore[attr-defined]
            raise


def fsync_dir(folder: Path) -> None:
    """A new file's directory entry is durable only once its folder is synced."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
