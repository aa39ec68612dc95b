"""Random ids (a request's, a job's) from a pool of the system's random bytes.

`secrets.token_hex` asks the kernel for each id, and that call lets the GIL go: on the event loop under
load, where engine threads hold it, taking it back is a wait, once per id. The pool asks once for many
ids; the bytes are the same kernel randomness (a child process after a fork starts a pool of its own,
so two processes never hand out the same id).
"""

from __future__ import annotations

import os
import threading

#: Bytes asked of the kernel at a time: 128 job ids (12 bytes each) or 256 request ids (16).
POOL_BYTES = 4096

_lock = threading.Lock()
_pool = b""
_used = 0


def token_hex(nbytes: int) -> str:
    """`nbytes` random bytes as hex, as `secrets.token_hex(nbytes)`."""
    global _pool, _used
    with _lock:
        if _used + nbytes > len(_pool):
            _pool, _used = os.urandom(max(POOL_BYTES, nbytes)), 0
        chunk = _pool[_used : _used + nbytes]
        _used += nbytes
    return chunk.hex()


def _forget() -> None:
    global _pool, _used
    _pool, _used = b"", 0


os.register_at_fork(after_in_child=_forget)
