"""The playground at / in a real browser: Playwright (from PyPI) driving Debian's chromium, against a
real `limner serve`. Screenshots of the main states go to $LIMNER_SCREENSHOTS (default: a temp dir).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from limner.stores.keys import SqliteKeyStore
from tests.support.images import gradient, png_bytes
from tests.support.server import RunningServer, start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not os.path.exists(CHROMIUM):
        pytest.skip("no chromium: apt-get install chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with start_server(tmp_path_factory.mktemp("ui-data")) as running:
        yield running


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("LIMNER_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Watched:
    """A page with its console errors and every URL it asked for."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.urls: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.urls.append(r.url))

    def offsite(self) -> list[str]:
        return [
            u
            for u in self.urls
            if urlparse(u).scheme in ("http", "https") and urlparse(u).hostname != "127.0.0.1"
        ]


@pytest.fixture
def page(browser: Any, ui_server: RunningServer) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    watched = Watched(context.new_page())
    watched.page.goto(ui_server.base_url + "/")
    watched.page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    yield watched
    context.close()


def choose(page: Any, model: str, **fields: str) -> None:
    page.select_option("#model", model)
    for name, value in fields.items():
        element = page.locator(f"#{name}")
        if element.evaluate("e => e.tagName") == "SELECT":
            element.select_option(value)
        else:
            element.fill(value)


def image_bytes(page: Any, selector: str) -> bytes:
    data = page.eval_on_selector(
        selector,
        """async img => {
            const buffer = await (await fetch(img.src)).arrayBuffer();
            let text = ''; for (const b of new Uint8Array(buffer)) text += String.fromCharCode(b);
            return btoa(text);
        }""",
    )
    return base64.b64decode(data)


def test_the_page_works_under_its_content_security_policy(browser: Any, ui_server: RunningServer) -> None:
    """The other tests bypass the page's CSP (Playwright's waits evaluate strings, which it forbids);
    here it is enforced: the page loads its models and makes an image with no violation and no error."""
    import time

    context = browser.new_context()
    watched = Watched(context.new_page())
    response = watched.page.goto(ui_server.base_url + "/")
    assert "script-src 'self'" in response.headers["content-security-policy"]

    def until(expression: str) -> None:
        deadline = time.monotonic() + 120
        while not watched.page.evaluate(expression):
            assert time.monotonic() < deadline, expression
            time.sleep(0.1)

    until("document.querySelectorAll('#model option').length > 0")
    watched.page.fill("#prompt", "a lighthouse at night")
    watched.page.click("#submit")
    until("document.querySelectorAll('#live img').length > 0")
    assert watched.errors == [] and watched.offsite() == []
    context.close()


def test_the_page_loads_offline_with_no_errors(page: Watched, shots: Path) -> None:
    assert page.page.title() == "limner playground"
    models = page.page.eval_on_selector_all("#model option", "options => options.map(o => o.value)")
    assert "gpt-image-1" in models and "dall-e-2" in models
    page.page.screenshot(path=str(shots / "01-loaded.png"), full_page=True)
    assert page.errors == [] and page.offsite() == []


def test_a_generation_shows_its_image(page: Watched, shots: Path) -> None:
    p = page.page
    choose(p, "gpt-image-1", quality="low", seed="7")
    p.fill("#prompt", "a red sun over blue mountains")
    p.click("#submit")
    p.wait_for_selector("#live img")
    image = Image.open(io.BytesIO(image_bytes(p, "#live img")))
    assert image.size == (1024, 1024)
    p.wait_for_selector("#gallery li")
    p.screenshot(path=str(shots / "02-generated.png"), full_page=True)
    assert page.errors == [] and page.offsite() == []


def test_rerun_from_the_gallery_gives_the_same_bytes(page: Watched) -> None:
    p = page.page
    choose(p, "gpt-image-1", quality="low", seed="12345")
    p.fill("#prompt", "a green tree by a house")
    p.click("#submit")
    p.wait_for_function("document.querySelectorAll('#gallery li').length >= 1")
    before = p.locator("#gallery li").count()
    first = image_bytes(p, "#gallery li:first-child img")
    p.click('#gallery li:first-child [data-action="rerun"]')
    p.wait_for_function(f"document.querySelectorAll('#gallery li').length > {before}")
    again = image_bytes(p, "#gallery li:first-child img")
    assert again == first


def test_painting_a_mask_keeps_the_unpainted_half(page: Watched, shots: Path) -> None:
    p = page.page
    original = gradient(256, 256)
    p.click("#tab-edit")
    p.set_input_files(
        "#images", files=[{"name": "in.png", "mimeType": "image/png", "buffer": png_bytes(original)}]
    )
    p.wait_for_selector("#mask-tools:not([hidden])")
    choose(p, "dall-e-2", size="256x256", seed="3")
    p.fill("#prompt", "a yellow star")
    p.fill("#brush-size", "40")
    box = p.locator("#paint").bounding_box()
    assert box is not None
    # Paint rows over the right half only: stroke centres stay a brush radius right of the middle.
    radius_css = 40 / 2
    left = box["x"] + box["width"] / 2 + radius_css + 2
    right = box["x"] + box["width"] - 2
    y = box["y"] + 2
    while y < box["y"] + box["height"]:
        p.mouse.move(left, y)
        p.mouse.down()
        p.mouse.move(right, y, steps=4)
        p.mouse.up()
        y += radius_css
    p.click("#show-mask")
    p.screenshot(path=str(shots / "03-mask-preview.png"), full_page=True)
    p.click("#show-mask")
    p.screenshot(path=str(shots / "04-mask-painted.png"), full_page=True)
    p.click("#submit")
    p.wait_for_selector("#live img")
    edited = np.asarray(Image.open(io.BytesIO(image_bytes(p, "#live img"))).convert("RGB"), dtype=np.int16)
    sent = np.asarray(original, dtype=np.int16)
    assert edited.shape == sent.shape
    assert np.array_equal(edited[:, :128], sent[:, :128])  # the unpainted half, pixel for pixel
    assert np.abs(edited[:, 160:] - sent[:, 160:]).mean() > 5  # the painted area was redrawn
    p.screenshot(path=str(shots / "05-edited.png"), full_page=True)
    assert page.errors == []


def test_a_stream_shows_a_partial_image_before_the_final_one(page: Watched, shots: Path) -> None:
    p = page.page
    p.evaluate(
        """() => { window.__seen = [];
            new MutationObserver(() => {
              for (const c of document.querySelectorAll('#live figcaption')) {
                if (!window.__seen.includes(c.textContent)) window.__seen.push(c.textContent);
              }
            }).observe(document.getElementById('live'), {childList: true, subtree: true}); }"""
    )
    choose(p, "gpt-image-1", quality="high", seed="5")
    p.check("#stream")
    p.fill("#partial_images", "2")
    p.fill("#prompt", "a forest with a river")
    p.click("#submit")
    p.wait_for_function("window.__seen.includes('image 1')", timeout=120_000)
    seen = p.evaluate("window.__seen")
    assert seen.index("image 1: partial 1") < seen.index("image 1")
    p.screenshot(path=str(shots / "06-streamed.png"), full_page=True)


def test_cancel_during_a_slow_job_drains_the_queue(page: Watched, ui_server: RunningServer) -> None:
    p = page.page
    ui_server.wait_idle()
    done, cancelled = ui_server.jobs()
    choose(p, "gpt-image-2", quality="high", n="10", size="custom", seed="1")
    p.fill("#custom-size", "3840x2160")
    p.fill("#prompt", "a detailed city")
    p.click("#submit")
    p.wait_for_function("!document.getElementById('cancel').disabled")
    deadline_polls = 0
    while ui_server.pending() == 0:
        deadline_polls += 1
        assert deadline_polls < 2400, "the job never reached the server"
        p.wait_for_timeout(50)
    p.click("#cancel")
    ui_server.wait_idle()
    assert ui_server.jobs() == (done, cancelled + 1)
    assert p.text_content("#progress") == "cancelled"


def test_phone_width_and_keyboard(browser: Any, ui_server: RunningServer, shots: Path) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, bypass_csp=True)
    p = context.new_page()
    p.goto(ui_server.base_url + "/")
    p.wait_for_function("document.querySelectorAll('#model option').length > 0")
    assert p.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    p.focus("#tab-generate")
    p.keyboard.press("ArrowRight")
    assert p.get_attribute("#tab-edit", "aria-selected") == "true"
    p.keyboard.press("ArrowRight")
    assert p.get_attribute("#tab-vary", "aria-selected") == "true"
    p.screenshot(path=str(shots / "07-phone.png"), full_page=True)
    context.close()


def test_a_server_that_needs_a_key_points_at_the_key_field(browser: Any, tmp_path: Path, shots: Path) -> None:
    data = tmp_path / "keyed"
    _, key = SqliteKeyStore(data / "keys.sqlite3").create("ui")
    with start_server(data) as server:
        context = browser.new_context(bypass_csp=True)
        p = context.new_page()
        p.goto(server.base_url + "/")
        p.wait_for_selector("#error:not([hidden])")
        # The page's own words: where to put the key, not curl's Authorization header.
        message = p.text_content("#error") or ""
        assert "paste yours into the API key field" in message and "Bearer" not in message
        assert p.get_attribute("#api-key", "aria-invalid") == "true"
        assert p.evaluate("document.activeElement.id") == "api-key"
        assert p.text_content("#model") == "needs an API key"
        # The placeholder fits its field (measured in the field's own font).
        fits = p.evaluate(
            """() => {
              const field = document.getElementById("api-key");
              const style = getComputedStyle(field);
              const context = document.createElement("canvas").getContext("2d");
              context.font = `${style.fontSize} ${style.fontFamily}`;
              const room = field.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
              return context.measureText(field.placeholder).width <= room;
            }"""
        )
        assert fits
        p.screenshot(path=str(shots / "07-key-needed.png"), full_page=True)
        p.fill("#api-key", "lim-wrong-key-123456789")
        p.dispatch_event("#api-key", "change")
        p.wait_for_function("document.getElementById('error').textContent.includes('was not accepted')")
        p.screenshot(path=str(shots / "08-wrong-key.png"), full_page=True)
        p.fill("#api-key", key)
        p.dispatch_event("#api-key", "change")
        p.wait_for_function(
            "[...document.querySelectorAll('#model option')].some(o => o.value === 'gpt-image-1')"
        )
        assert p.is_hidden("#error") and p.get_attribute("#api-key", "aria-invalid") is None
        context.close()


@pytest.mark.diffusers
def test_the_edit_form_follows_what_each_model_takes(browser: Any, tmp_path: Path, shots: Path) -> None:
    """Several images where the model takes references, the mask painter only where it can use a mask
    (the playground reads both from /v1/models). A Qwen-Image-Edit-Plus checkpoint described by its
    configs alone serves here: the form needs its capabilities, never its weights."""
    import json

    folder = tmp_path / "qwen-edit-plus"
    (folder / "vae").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "QwenImageEditPlusPipeline"}))
    (folder / "vae" / "config.json").write_text(json.dumps({"temperal_downsample": [False, True, True]}))
    with start_server(tmp_path / "data", "--model", f"qwen-edit=diffusers:{folder}", timeout=120) as server:
        context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        p = context.new_page()
        p.goto(server.base_url + "/")
        p.wait_for_function("document.querySelectorAll('#model option').length > 0")
        p.click("#tab-edit")
        p.set_input_files(
            "#images",
            files=[{"name": "in.png", "mimeType": "image/png", "buffer": png_bytes(gradient(64, 64))}],
        )
        choose(p, "gpt-image-1.5")  # masks and up to 16 images
        p.wait_for_selector("#mask-tools:not([hidden])")
        assert p.eval_on_selector("#images", "e => e.multiple")

        choose(p, "qwen-edit")  # reference images, no mask
        p.wait_for_selector("#mask-tools", state="hidden")
        assert p.eval_on_selector("#images", "e => e.multiple")
        assert p.text_content("#images-note") == "up to 16 reference images"
        p.screenshot(path=str(shots / "09-reference-editor.png"), full_page=True)

        choose(p, "dall-e-2")  # one image, a mask
        p.wait_for_selector("#mask-tools:not([hidden])")
        assert not p.eval_on_selector("#images", "e => e.multiple")
        assert p.text_content("#images-note") == "the first one is edited; paint on it to mask"
        context.close()
