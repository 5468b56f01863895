"""`vilbert serve`'s page in a real headless browser (Debian's Chromium, driven by Playwright):
load the page, upload an image, ask, and read the answers from the DOM; the same answers as the
inference API gives; a bad upload is an error shown on the page."""

from __future__ import annotations

import os
import shutil
import threading

import pytest
import torch
from PIL import Image

from vilbert.inference import VQA, Predictor
from vilbert.model import build_model, load_preset, save_pretrained
from vilbert.web.app import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(task_world, tmp_path_factory):
    from werkzeug.serving import make_server

    torch.manual_seed(0)
    config = load_preset("tiny")
    config.heads = {"vqa": {"num_answers": 3, "answers": ["red", "blue", "two"]}, "region_score": {}}
    model_dir = tmp_path_factory.mktemp("web") / "model"
    save_pretrained(build_model(config), model_dir)
    predictor = Predictor.from_pretrained(model_dir, device="cpu", features=task_world / "features.lmdb")
    http = make_server("127.0.0.1", 0, create_app(predictor))
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}", model_dir
    http.shutdown()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but Chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def test_the_page_answers_a_question_about_an_uploaded_image(server, browser, task_world, tmp_path):
    url, model_dir = server
    image = task_world / "images" / "3.png"
    page = browser.new_page()
    page.goto(url)
    assert page.title() == "vilbert"
    assert page.locator("input[name=mode]").count() == 2  # the model has both heads
    page.set_input_files("#image", str(image))
    page.fill("#text", "what colour is the circle?")
    page.click("#submit")
    page.wait_for_selector("#answers li", timeout=60_000)
    shown = page.eval_on_selector_all("#answers li", "items => items.map(li => li.firstChild.textContent)")
    page.screenshot(path=str(tmp_path / "answers.png"), full_page=True)
    expected = VQA.from_pretrained(model_dir, device="cpu", features=task_world / "features.lmdb").answer(
        Image.open(image), "what colour is the circle?")
    assert shown == [a.answer for a in expected]
    assert page.locator("#attention").get_attribute("src").startswith("data:image/png;base64,")
    assert (tmp_path / "answers.png").stat().st_size > 1000

    page.check("input[value=expression]")
    page.fill("#text", "the small blue square")
    page.click("#submit")
    page.wait_for_selector("#boxed:not([hidden])", timeout=60_000)
    box = [float(v) for v in page.locator("#boxed").get_attribute("data-box").split(",")]
    assert len(box) == 4 and box[0] < box[2] and box[1] < box[3]


def test_a_file_that_is_not_an_image_is_an_error_on_the_page(server, browser, tmp_path):
    url, _ = server
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    page = browser.new_page()
    page.goto(url)
    page.set_input_files("#image", str(bad))
    page.fill("#text", "what is it?")
    page.click("#submit")
    page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=30_000)
    assert "notes.png" in page.inner_text("#error")
