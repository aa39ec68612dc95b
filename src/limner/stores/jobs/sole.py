"""Whether one process alone uses a job store's file, and its hand-over when another process comes.

A process that alone uses the store may keep in memory what it has not written yet: the durable layer
writes a short synchronous job once, at its end, and claims its Idempotency-Key in memory meanwhile
(durable.py). That is only sound while no other process can claim the same key in the store, so the
processes that open one SQLite file agree through two lock files beside it (flock: the kernel drops a
lock when its process dies, kill -9 included):

- `<database>.users`: the process alone holds it exclusively; the others hold it shared.
- `<database>.knock`: every process that is not alone holds it shared for as long as it runs. The
  process alone tries it exclusively (`knocked`); when that fails, someone has come: it writes what
  only it knows, then shares (`share`), and the newcomer, which waits for `.users`, goes on.

    sole = SoleUse(path)
    sole.take()      # True: alone; False: shared; None: another process is alone and has not shared yet
    sole.knocked()   # while alone: has another process come?
    sole.share()     # stop being alone (after writing what only this process knew)
    sole.close()

Each SoleUse opens its own files, so two servers in one process (tests) exclude each other as two
processes do. A directory where the files cannot be made (read-only) makes every process share.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class SoleUse:
    def __init__(self, database: Path) -> None:
        self._users_path = database.with_name(database.name + ".users")
        self._knock_path = database.with_name(database.name + ".knock")
        self._users: int | None = None
        self._knock: int | None = None
        #: A second descriptor of the knock file: the process alone tries it exclusively.
        self._probe: int | None = None
        self.alone = False

    def take(self) -> bool | None:
        """Try once, without waiting: True when this process is now alone with the store, False when it
        shares it, None when another process is alone and has not shared yet (try again soon)."""
        if self.alone:
            return True
        try:
            return self._take()
        except OSError:  # a read-only directory, a file system without locks: never alone
            self.close()
            return False

    def _take(self) -> bool | None:
        if self._knock is None:
            self._knock = _open(self._knock_path)
            fcntl.flock(self._knock, fcntl.LOCK_SH)  # knocks: whoever is alone shares
            self._users = _open(self._users_path)
            self._probe = _open(self._knock_path)
        assert self._users is not None
        if _try(self._users, fcntl.LOCK_EX):
            fcntl.flock(self._knock, fcntl.LOCK_UN)
            if not self._knocked():
                self.alone = True
                return True
            # Another process came at the same moment: share at once.
            fcntl.flock(self._knock, fcntl.LOCK_SH)
            fcntl.flock(self._users, fcntl.LOCK_SH)
            return False
        if _try(self._users, fcntl.LOCK_SH):
            return False  # others share it: so does this one (its knock stays, for good)
        return None  # one process is alone: it sees the knock and shares within a tick

    def knocked(self) -> bool:
        """While alone: whether another process has come (it holds the knock file shared). A lock that
        cannot be tried counts as a knock: the caller stops keeping anything in memory only."""
        try:
            return self.alone and self._knocked()
        except OSError:
            return True

    def _knocked(self) -> bool:
        assert self._probe is not None
        if not _try(self._probe, fcntl.LOCK_EX):
            return True
        fcntl.flock(self._probe, fcntl.LOCK_UN)
        return False

    def share(self) -> None:
        """Stop being alone: the caller has written what only it knew. Knocks first, so that a process
        that takes `.users` in the moment it changes hands shares too."""
        if not self.alone:
            return
        assert self._knock is not None and self._users is not None
        try:
            fcntl.flock(self._knock, fcntl.LOCK_SH)
            fcntl.flock(self._users, fcntl.LOCK_SH)
        except OSError:
            self.close()
        self.alone = False

    def close(self) -> None:
        for fd in (self._users, self._knock, self._probe):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._users = self._knock = self._probe = None
        self.alone = False


def _open(path: Path) -> int:
    return os.open(path, os.O_CREAT | os.O_RDWR, 0o600)


def _try(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
