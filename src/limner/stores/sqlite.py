"""What the SQLite stores share: files readable by their owner alone (they hold prompts, uploads and
key hashes)."""

from __future__ import annotations

import contextlib
from pathlib import Path


def private(path: Path) -> None:
    """The database and its WAL files readable by their owner alone (0600)."""
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):  # not ours to change (an operator's file): left as it is
            file.chmod(0o600)
