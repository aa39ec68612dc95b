"""Keys, limits, links and their expiry, with `limner serve` started per test with its own options."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx2
import openai
import pytest

from tests.support import schema
from tests.support.server import start_server


def limner(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "limner", *args], capture_output=True, text=True, check=True)
    return done.stdout


def test_keys_lifecycle(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with start_server(data) as server:
        open_client = openai.OpenAI(base_url=server.api_base, api_key="anything", max_retries=0)
        assert open_client.images.generate(model="dall-e-2", prompt="x", size="256x256").data  # no key yet

        key = limner("keys", "create", "--data-dir", str(data), "--name", "ci").strip().splitlines()[-1]
        assert key.startswith("lim-")
        # The database holds a hash, never the key.
        assert key.encode() not in (data / "keys.sqlite3").read_bytes()

        with pytest.raises(openai.AuthenticationError) as wrong:
            open_client.images.generate(model="dall-e-2", prompt="x", size="256x256")
        assert wrong.value.code == "invalid_api_key"
        schema.validate_error(wrong.value.response.json())
        missing = httpx2.post(server.api_base + "/images/generations", json={"prompt": "x"})
        assert (
            missing.status_code == 401 and "didn't provide an API key" in missing.json()["error"]["message"]
        )
        schema.validate_error(missing.json())

        good = openai.OpenAI(base_url=server.api_base, api_key=key, max_retries=0)
        assert good.images.generate(model="dall-e-2", prompt="x", size="256x256").data
        assert httpx2.get(server.base_url + "/health").status_code == 200  # health needs no key

        listing = limner("keys", "list", "--data-dir", str(data))
        key_id = listing.split()[0]
        assert "ci" in listing and key not in listing
        limner("keys", "revoke", key_id, "--data-dir", str(data))
        assert "revoked" in limner("keys", "list", "--data-dir", str(data))
        # The only key is revoked: the server stays closed (it never fails open); the revocation takes
        # effect within the key cache's second.
        deadline = time.monotonic() + 30
        while True:
            try:
                good.images.generate(model="dall-e-2", prompt="x", size="256x256")
            except openai.AuthenticationError:
                break
            assert time.monotonic() < deadline, "a revoked key still works"
            time.sleep(0.1)
        with pytest.raises(openai.AuthenticationError):
            open_client.images.generate(model="dall-e-2", prompt="x", size="256x256")


def test_body_over_the_limit_is_413(tmp_path: Path) -> None:
    config = tmp_path / "limner.toml"
    config.write_text("max_request_bytes = 2048\n")
    with start_server(tmp_path / "data", "--config", str(config)) as server:
        client = openai.OpenAI(base_url=server.api_base, api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            client.images.generate(model="gpt-image-1", prompt="a" * 4000)
        assert info.value.status_code == 413
        schema.validate_error(info.value.response.json())
        # Chunked (no Content-Length): refused while it is received.
        chunks = (b"x" * 1024 for _ in range(8))
        answer = httpx2.post(
            server.api_base + "/images/generations",
            content=chunks,
            headers={"content-type": "application/json"},
        )
        assert answer.status_code == 413
        assert client.images.generate(
            model="gpt-image-1", prompt="small", quality="low"
        ).data  # still serving


def test_public_url_and_forwarded_headers(tmp_path: Path) -> None:
    with start_server(tmp_path / "a", "--public-url", "https://img.example.com/") as server:
        client = openai.OpenAI(base_url=server.api_base, api_key="x", max_retries=0)
        url = (client.images.generate(model="dall-e-2", prompt="x", size="256x256").data or [])[0].url or ""
        assert url.startswith("https://img.example.com/files/")

    forwarded = {"x-forwarded-proto": "https", "x-forwarded-host": "evil.example"}
    with start_server(tmp_path / "b") as server:
        answer = httpx2.post(
            server.api_base + "/images/generations",
            headers=forwarded,
            json={"model": "dall-e-2", "prompt": "x", "size": "256x256"},
        )
        assert answer.json()["data"][0]["url"].startswith(server.base_url + "/files/")  # untrusted: ignored

    config = tmp_path / "trusted.toml"
    config.write_text('trusted_proxies = ["127.0.0.1"]\n')
    with start_server(tmp_path / "c", "--config", str(config)) as server:
        answer = httpx2.post(
            server.api_base + "/images/generations",
            headers=forwarded,
            json={"model": "dall-e-2", "prompt": "x", "size": "256x256"},
        )
        assert answer.json()["data"][0]["url"].startswith("https://evil.example/files/")


def test_links_expire_and_the_sweeper_deletes_files(tmp_path: Path) -> None:
    config = tmp_path / "limner.toml"
    config.write_text("url_ttl_seconds = 3\nsweep_interval_seconds = 0.3\n")  # margin for a loaded machine
    data = tmp_path / "data"
    with start_server(data, "--config", str(config)) as server:
        client = openai.OpenAI(base_url=server.api_base, api_key="x", max_retries=0)
        url = (client.images.generate(model="dall-e-2", prompt="x", size="256x256").data or [])[0].url or ""
        assert httpx2.get(url).status_code == 200  # a link lives at least the TTL, so this is in time
        assert len(list((data / "images").iterdir())) == 1
        expires = int(httpx2.URL(url).params["expires"])
        time.sleep(max(0.0, expires - time.time()) + 1.1)
        expired = httpx2.get(url)
        assert expired.status_code == 410
        schema.validate_error(expired.json())
        deadline = time.monotonic() + 15  # the sweeper runs every 0.3 s; allow for a loaded machine
        while list((data / "images").iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list((data / "images").iterdir()) == []


def test_model_flag_maps_a_name_to_an_engine(tmp_path: Path) -> None:
    with start_server(tmp_path / "data", "--model", "house-style=sketch") as server:
        client = openai.OpenAI(base_url=server.api_base, api_key="x", max_retries=0)
        assert "house-style" in {m.id for m in client.models.list()}
        for fmt, content_type in [("jpeg", "image/jpeg"), ("webp", "image/webp"), ("png", "image/png")]:
            result = client.images.generate(
                model="house-style", prompt="x", size="512x512", response_format="url", output_format=fmt
            )  # type: ignore[call-overload]
            got = httpx2.get((result.data or [])[0].url or "")
            assert got.status_code == 200 and got.headers["content-type"] == content_type
            assert result.output_format == fmt and result.size == "512x512"


def test_config_errors_stop_the_server_with_a_message(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[models.x]\nengine = "warp-drive"\n')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "limner",
            "serve",
            "--config",
            str(config),
            "--data-dir",
            str(tmp_path / "d"),
            "--port",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "warp-drive" in done.stderr and "Traceback" not in done.stderr


def test_a_sketch_table_refuses_an_option_it_would_ignore(tmp_path: Path) -> None:
    config = tmp_path / "bogus.toml"
    config.write_text('[models."gpt-image-1.5"]\nengine = "sketch"\nbogus_option = 3\n')
    done = subprocess.run(
        [sys.executable, "-m", "limner", "serve", "--config", str(config), "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "models.gpt-image-1.5.bogus_option: unknown option for the sketch engine" in line


def test_a_models_default_response_format_is_the_operators_choice(tmp_path: Path) -> None:
    """LangChain's DALL-E wrapper reads only .url and Haystack only .b64_json: each model's default is
    set in its table, and a request that names response_format still gets what it named."""
    config = tmp_path / "formats.toml"
    config.write_text(
        '[models."gpt-image-1"]\nresponse_format = "url"\n'
        '[models."dall-e-3"]\nresponse_format = "b64_json"\n'
        '[models.house]\nengine = "sketch"\nresponse_format = "url"\n'
    )
    with start_server(tmp_path / "data", "--config", str(config)) as server:
        client = openai.OpenAI(base_url=server.api_base, api_key="x", max_retries=0)
        gpt = client.images.generate(model="gpt-image-1", prompt="a cat", quality="low", size="1024x1024")
        assert gpt.data and gpt.data[0].url and gpt.data[0].b64_json is None
        assert httpx2.get(gpt.data[0].url).status_code == 200
        dalle = client.images.generate(model="dall-e-3", prompt="a cat")
        assert dalle.data and dalle.data[0].b64_json and dalle.data[0].url is None
        asked = client.images.generate(model="dall-e-3", prompt="a cat", response_format="url")
        assert asked.data and asked.data[0].url
        house = client.images.generate(model="house", prompt="a cat", size="256x256")
        assert house.data and house.data[0].url
        untouched = client.images.generate(model="dall-e-2", prompt="a cat", size="256x256")
        assert untouched.data and untouched.data[0].url  # DALL-E's own default, as before
        models = httpx2.get(server.api_base + "/models/gpt-image-1").json()
        assert models["capabilities"]["default_response_format"] == "url"


def test_a_full_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    config = tmp_path / "limner.toml"
    config.write_text(
        'sketch_concurrency = 1\n[models.slow]\nengine = "sketch"\nmax_queue = 0\nmax_pixels = 16777216\n'
    )
    with start_server(tmp_path / "data", "--config", str(config)) as server:
        body = {"model": "slow", "prompt": "a detailed city", "size": "2048x2048", "quality": "high", "n": 4}
        with httpx2.Client(timeout=None) as http:
            import threading

            first: dict[str, int] = {}
            worker = threading.Thread(
                target=lambda: first.update(
                    status=http.post(server.api_base + "/images/generations", json=body).status_code
                )
            )
            worker.start()
            deadline = time.monotonic() + 120
            while httpx2.get(server.base_url + "/health").json()["queues"].get("sketch", 0) == 0:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            busy = http.post(server.api_base + "/images/generations", json={**body, "n": 1})
            assert busy.status_code == 429
            assert busy.json()["error"]["code"] == "rate_limit_exceeded"
            assert int(busy.headers["retry-after"]) >= 1
            schema.validate_error(busy.json())
            assert httpx2.get(server.base_url + "/health").status_code == 200  # health answers meanwhile
            worker.join()
            assert first["status"] == 200
