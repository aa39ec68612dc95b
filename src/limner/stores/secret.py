"""The secret that signs image links (and, by default, callbacks): given, or kept in the data dir."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

#: The shortest signing secret accepted: 256 bits, as the HMAC-SHA256 key it is.
MIN_SECRET_BYTES = 32


class SecretError(Exception):
    """The signing secret is unusable (too short, unreadable, unwritable): the server must not start."""


def load_secret(
    path: Path,
    *,
    given: str | None = None,
    what: str = "link-signing secret",
    given_by: str = "LIMNER_SECRET or `secret` in the config",
) -> bytes:
    """A signing secret: the one that signs image links (the default names), or another (`what`, set by
    `given_by`).

    `given` (from LIMNER_SECRET or the config) wins: servers that share links must share it. Otherwise
    the file under the data dir, created once with 32 random bytes, mode 0600, written atomically (a
    full disk leaves no empty file behind). A secret under 32 bytes is refused, never used.
    """
    if given is not None:
        secret = given.encode()
        if len(secret) < MIN_SECRET_BYTES:
            raise SecretError(
                f"the {what} ({given_by}) is {len(secret)} bytes; "
                f"it must be at least {MIN_SECRET_BYTES} (try: python3 -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')"
            )
        return secret
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        return _create_secret(path, what)
    except OSError as exc:
        raise SecretError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretError(
            f"the {what} {path} is {len(secret)} bytes, under {MIN_SECRET_BYTES}: it was truncated or "
            "replaced. Delete it to make a new one (what was signed with it stops checking out), or "
            "restore it."
        )
    return secret


def _create_secret(path: Path, what: str) -> bytes:
    secret = secrets.token_bytes(MIN_SECRET_BYTES)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
            f.flush()
            os.fsync(f.fileno())
        # link, not rename: if another process made the secret meanwhile, keep theirs.
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load_secret(path, what=what)
    except OSError as exc:
        raise SecretError(f"cannot write the {what} {path}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return secret
