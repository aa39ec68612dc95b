"""Ids from the pool of random bytes (server/ids.py): the form of secrets.token_hex, never repeated,
and a forked child never hands out its parent's next ids."""

from __future__ import annotations

import os
import re

from limner.server import ids


def test_ids_have_the_form_of_token_hex_and_never_repeat() -> None:
    made = [ids.token_hex(12) for _ in range(3 * ids.POOL_BYTES // 12)]  # across refills of the pool
    assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in made)
    assert len(set(made)) == len(made)
    assert re.fullmatch(r"[0-9a-f]{16384}", ids.token_hex(8192))  # more than a pool at once


def test_a_forked_child_draws_from_a_pool_of_its_own() -> None:
    ids.token_hex(12)  # the parent's pool holds bytes not handed out yet
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover  (the child)
        os.write(write, ids.token_hex(16).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    childs = os.read(read, 64).decode()
    os.close(read)
    assert len(childs) == 32 and childs != ids.token_hex(16)
