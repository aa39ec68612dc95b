"""Authentication never fails open: the key setting is recorded, an unusable key database is a 503 (or a
one-line error at start-up), look-ups stay off the event loop, and the signing secret is never weak."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from limner.server.app import create_app
from limner.server.settings import Settings
from limner.stores.keys import KeyDatabaseError, SqliteKeyStore
from limner.stores.secret import SecretError, load_secret
from tests.support.inprocess import app_client


def settings(data_dir: Path, **fields: object) -> Settings:
    return Settings(data_dir=data_dir, **fields)  # type: ignore[arg-type]


def keys(data_dir: Path) -> SqliteKeyStore:
    return SqliteKeyStore(data_dir / "keys.sqlite3")


async def models_status(data_dir: Path, token: str | None = None, **fields: object) -> tuple[int, dict]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with app_client(settings(data_dir, **fields)) as client:
        response = await client.get("/v1/models", headers=headers)
        return response.status_code, response.json()


async def test_a_fresh_data_dir_is_open(tmp_path: Path) -> None:
    status, _ = await models_status(tmp_path)
    assert status == 200
    assert not (tmp_path / "keys.sqlite3").exists()  # serving never creates the key database


async def test_revoking_every_key_closes_the_server(tmp_path: Path) -> None:
    record, secret = keys(tmp_path).create("ci")
    assert (await models_status(tmp_path, secret))[0] == 200
    assert keys(tmp_path).revoke(record.id)
    status, body = await models_status(tmp_path, secret)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert (await models_status(tmp_path))[0] == 401


async def test_a_database_from_before_the_marker_still_requires_keys(tmp_path: Path) -> None:
    _, secret = keys(tmp_path).create()
    (tmp_path / "auth-required").unlink()  # as an older limner left it
    assert (await models_status(tmp_path))[0] == 401
    assert (await models_status(tmp_path, secret))[0] == 200
    assert (tmp_path / "auth-required").exists()


def _break(data_dir: Path, how: str) -> None:
    db = data_dir / "keys.sqlite3"
    if how == "deleted":
        db.unlink()
    elif how == "emptied":
        db.write_bytes(b"")
    else:
        db.write_bytes(b"this is not a database, just bytes " * 200)


@pytest.mark.parametrize("how", ["deleted", "emptied", "corrupt"])
async def test_an_unusable_database_is_a_503_while_serving(tmp_path: Path, how: str) -> None:
    _, secret = keys(tmp_path).create()
    async with app_client(settings(tmp_path)) as client:
        client.app.state.key_guard.ttl = 0  # type: ignore[attr-defined]  # read on every call
        ok = await client.get("/v1/models", headers={"authorization": f"Bearer {secret}"})
        assert ok.status_code == 200
        _break(tmp_path, how)
        for headers in ({"authorization": f"Bearer {secret}"}, {}):
            response = await client.get("/v1/models", headers=headers)
            assert response.status_code == 503
            error = response.json()["error"]
            assert error["type"] == "server_error"
            assert "keys.sqlite3" not in error["message"] and str(tmp_path) not in error["message"]
        assert (await client.get("/health")).status_code == 200  # the server keeps serving


@pytest.mark.parametrize("how", ["deleted", "emptied", "corrupt"])
async def test_an_unusable_database_stops_start_up_naming_the_file(tmp_path: Path, how: str) -> None:
    keys(tmp_path).create()
    _break(tmp_path, how)
    with pytest.raises(KeyDatabaseError, match=r"keys\.sqlite3"):
        create_app(settings(tmp_path))
    if how == "deleted":
        assert not (tmp_path / "keys.sqlite3").exists()  # never silently re-created empty


def test_limner_serve_with_an_unusable_database_prints_one_line(tmp_path: Path) -> None:
    keys(tmp_path).create()
    _break(tmp_path, "corrupt")
    proc = subprocess.run(
        [sys.executable, "-m", "limner", "serve", "--data-dir", str(tmp_path), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "keys.sqlite3" in lines[0] and "Traceback" not in proc.stderr


async def test_key_lookups_never_block_the_event_loop(tmp_path: Path) -> None:
    _, secret = keys(tmp_path).create()
    async with app_client(settings(tmp_path)) as client:
        guard = client.app.state.key_guard  # type: ignore[attr-defined]
        guard.ttl = 0
        locker = sqlite3.connect(tmp_path / "keys.sqlite3", isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # another process holding the database
        try:
            call = asyncio.ensure_future(
                client.get("/v1/models", headers={"authorization": f"Bearer {secret}"})
            )
            await asyncio.sleep(0.3)  # let the call reach the locked database
            assert not call.done()
            health = await client.get("/health")
            assert health.status_code == 200
            assert not call.done()  # /health answered while the key look-up was still waiting
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert (await call).status_code == 200


async def test_explicit_auth_setting(tmp_path: Path) -> None:
    record, secret = keys(tmp_path).create()
    assert (await models_status(tmp_path, auth="none"))[0] == 200
    assert (await models_status(tmp_path, secret, auth="keys"))[0] == 200
    keys(tmp_path).revoke(record.id)
    assert (await models_status(tmp_path, secret, auth="keys"))[0] == 401  # none active: closed, not open


async def test_auth_keys_without_a_key_database_refuses_to_start_saying_how_to_make_one(
    tmp_path: Path,
) -> None:
    with pytest.raises(KeyDatabaseError) as caught:
        create_app(settings(tmp_path, auth="keys"))
    message = str(caught.value)
    assert str(tmp_path / "keys.sqlite3") in message
    assert f"limner keys create --name NAME --data-dir {tmp_path}" in message
    assert not (tmp_path / "keys.sqlite3").exists()  # refusing creates nothing


async def test_auth_keys_whose_database_goes_missing_answers_503(tmp_path: Path) -> None:
    _, secret = keys(tmp_path).create()
    (tmp_path / "auth-required").unlink()  # only an explicit auth = "keys" holds the server closed now
    async with app_client(settings(tmp_path, auth="keys")) as client:
        client.app.state.key_guard.ttl = 0  # type: ignore[attr-defined]
        assert (
            await client.get("/v1/models", headers={"authorization": f"Bearer {secret}"})
        ).status_code == 200
        (tmp_path / "keys.sqlite3").unlink()
        response = await client.get("/v1/models", headers={"authorization": f"Bearer {secret}"})
        assert response.status_code == 503 and response.json()["error"]["type"] == "server_error"


def test_limner_serve_auth_keys_without_keys_prints_how_to_create_one(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "limner",
            "serve",
            "--data-dir",
            str(tmp_path),
            "--auth",
            "keys",
            "--port",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "no key database" in line and "limner keys create --name NAME" in line


async def test_the_startup_block_says_how_to_create_a_key_when_none_is_active(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record, _ = keys(tmp_path).create()
    keys(tmp_path).revoke(record.id)
    with caplog.at_level("INFO", logger="limner.server"):
        async with app_client(settings(tmp_path)) as client:
            assert (await client.get("/v1/models")).status_code == 401
    assert any(
        "required (0 active)" in r.getMessage() and "limner keys create --name NAME" in r.getMessage()
        for r in caplog.records
    )


def test_keys_cli_on_a_corrupt_database_prints_one_line(tmp_path: Path) -> None:
    keys(tmp_path).create()
    _break(tmp_path, "corrupt")
    for args in (["create"], ["list"], ["revoke", "key_0123456789abcdef"]):
        proc = subprocess.run(
            [sys.executable, "-m", "limner", "keys", *args, "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0, args
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "keys.sqlite3" in proc.stderr


# -- the link-signing secret ------------------------------------------------------------------------


async def test_a_short_secret_file_stops_the_server(tmp_path: Path) -> None:
    (tmp_path / "secret.key").write_bytes(b"")
    with pytest.raises(SecretError, match=r"secret\.key is 0 bytes"):
        create_app(settings(tmp_path))
    (tmp_path / "secret.key").write_bytes(b"x" * 31)
    with pytest.raises(SecretError, match="31 bytes"):
        create_app(settings(tmp_path))


def test_a_failed_secret_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(SecretError, match="No space left"):
        load_secret(tmp_path / "secret.key")
    assert list(tmp_path.iterdir()) == []


async def test_limner_secret_is_shared_and_must_be_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIMNER_SECRET", "short")
    with pytest.raises(SecretError, match="at least 32"):
        create_app(Settings.load(data_dir=tmp_path / "a"))
    monkeypatch.setenv("LIMNER_SECRET", "s" * 40)
    body = {"model": "dall-e-2", "prompt": "a sun", "size": "256x256"}
    async with app_client(Settings.load(data_dir=tmp_path / "a")) as one:
        url = (await one.post("/v1/images/generations", json=body)).json()["data"][0]["url"]
    path = url.removeprefix("http://testserver")
    name = path.split("?")[0].rsplit("/", 1)[-1]
    # The other server has its own data dir: copy the image there, as a shared store would hold it.
    (tmp_path / "b" / "images").mkdir(parents=True)
    (tmp_path / "b" / "images" / name).write_bytes((tmp_path / "a" / "images" / name).read_bytes())
    async with app_client(Settings.load(data_dir=tmp_path / "b")) as other:
        assert (await other.get(path)).status_code == 200
    assert not (tmp_path / "b" / "secret.key").exists()


def test_keys_create_makes_a_fresh_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "new" / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "limner", "keys", "create", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert (data / "auth-required").exists() and proc.stdout.strip().splitlines()[-1].startswith("lim-")
