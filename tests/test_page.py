"""The page at `/` in a real headless browser (Debian's chromium, driven by
Playwright) against a real `bgrm serve` process: choose files, send, watch,
see each result beside its input, download it; and the page's errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests
import videoclips
from live import KEY, assert_cutout, need, served
from PIL import Image, ImageOps

from bgrm.models.registry import SEGMENTATION_MODELS

CHROMIUM = "/usr/bin/chromium"
# No sandbox: CI runs as root in a container, whose /dev/shm may be tiny. The
# rest keeps a headless run from reaching for the network or a GPU.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WAIT_MS = 90_000  # one job on a busy 2-core machine, with the model's first load


@pytest.fixture(scope="module")
def server(tmp_path_factory, env):
    with served(tmp_path_factory.mktemp("page") / "data", env) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    need(Path(CHROMIUM).is_file(), f"chromium ({CHROMIUM})")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "playwright (make install)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh browser profile (no stored key) on the page; fails the test on
    any uncaught script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  accept_downloads=True)
    tab = context.new_page()
    errors = []
    tab.on("pageerror", lambda exc: errors.append(exc))
    tab.goto(server + "/")
    yield tab
    context.close()
    assert not errors, errors


def _send(page, *paths: Path):
    """Choose ``paths``, press the button; the newest job on the page."""
    page.set_input_files("#files", [str(p) for p in paths])
    page.click("#send")
    return page.locator("#jobs .job").first


def _key(page) -> None:
    """Type the key as a person does: open the key box, fill it in."""
    if page.locator("#key-box").get_attribute("open") is None:
        page.click("#key-box summary")
    page.fill("#api_key", KEY)


def _finished(job):
    job.page.wait_for_function(
        "job => job.dataset.state === 'finished' || job.dataset.state === 'stopped'",
        arg=job.element_handle(), timeout=WAIT_MS)
    assert job.get_attribute("data-state") == "finished", job.inner_text()
    return job


def _natural_width(locator) -> int:
    locator.wait_for()
    return locator.evaluate("img => img.complete ? img.naturalWidth : 0")


def test_key_asked_for_then_photo_cut_out_and_downloaded(page, server, fixtures, tmp_path):
    photo = fixtures / "astronaut.png"
    # Without the key: the server's own refusal, shown where the job is.
    refused = _send(page, photo)
    refused.locator(".job-error").wait_for()
    direct = requests.post(server + "/v1/convert/", files=[("files", photo.open("rb"))],
                           data={"convert_to": "image-backgroundremover"})
    assert direct.status_code in (401, 403)
    assert direct.json()["error"] in refused.locator(".job-error").inner_text()
    assert page.locator("#key-box").get_attribute("open") is not None
    assert refused.locator(".output .frame").inner_text() == "Not sent"

    _key(page)
    job = _finished(_send(page, photo))
    width = Image.open(photo).width
    assert _natural_width(job.locator(".input img")) == width
    assert _natural_width(job.locator(".output img")) == width
    # Transparency is shown over a checkerboard.
    shown = job.locator(".output img")
    assert "conic-gradient" in shown.evaluate("el => getComputedStyle(el).backgroundImage")
    assert "Done: 1 file" in job.locator(".job-status").inner_text()

    with page.expect_download() as info:
        job.locator("a.download").click()
    assert info.value.suggested_filename == "astronaut_processed.png"
    saved = tmp_path / "saved.png"
    info.value.save_as(saved)
    assert assert_cutout(saved.read_bytes()).size == Image.open(photo).size

    # The key stays in this browser for the next visit.
    page.reload()
    assert page.input_value("#api_key") == KEY


def test_a_bad_file_shows_its_reason_beside_the_good_one(page, server, fixtures, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("a shopping list, not a picture\n")
    good = tmp_path / "chelsea.png"
    shutil.copy(fixtures / "chelsea.png", good)
    _key(page)
    job = _finished(_send(page, good, bad))

    answer = requests.post(server + "/v1/results/", data={"uuid": job.get_attribute("data-uuid")})
    failed = answer.json()["failed"]
    assert [f["filename"] for f in failed] == ["notes.png"]
    reason = failed[0]["error"]
    assert reason
    pairs = job.locator(".pair")
    assert pairs.count() == 2
    bad_pair = job.locator(".pair.bad")
    assert bad_pair.count() == 1
    assert bad_pair.locator(".input figcaption").inner_text() == "notes.png"
    assert bad_pair.locator(".reason").inner_text() == reason
    good_pair = job.locator(".pair:not(.bad)")
    assert good_pair.locator(".input figcaption").inner_text() == "chelsea.png"
    assert _natural_width(good_pair.locator(".output img")) == Image.open(good).width
    assert "1 done, 1 failed" in job.locator(".job-status").inner_text()


def test_a_picture_background_goes_with_the_photo(page, fixtures, tmp_path):
    photo, backdrop = fixtures / "astronaut.png", fixtures / "coffee.png"
    _key(page)
    page.get_by_label("Picture", exact=True).check()
    page.get_by_label("Background picture").set_input_files(str(backdrop))
    job = _finished(_send(page, photo))
    with page.expect_download() as info:
        job.locator("a.download").click()
    saved = tmp_path / "saved.png"
    info.value.save_as(saved)
    out = Image.open(saved).convert("RGBA")
    assert out.size == Image.open(photo).size
    assert out.getchannel("A").getextrema() == (255, 255)
    # The wall behind the astronaut (top right) is now the coffee picture,
    # scaled to cover and centred.
    behind = ImageOps.fit(Image.open(backdrop).convert("RGB"), out.size)
    got, want = out.getpixel((500, 12))[:3], behind.getpixel((500, 12))
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 40, (got, want)


def test_a_video_comes_back_as_an_animated_gif(page, fixtures, tmp_path):
    clip = videoclips.make_clip(tmp_path / "clip.mp4", fixtures / "astronaut.png",
                                size=(96, 64), frames=3)
    _key(page)
    page.check("input[name=kind][value=video]")
    page.select_option("#video_format", "gif")
    page.fill("#frame_limit", "2")
    job = _finished(_send(page, clip))
    assert _natural_width(job.locator(".output img")) == 96
    href = job.locator("a.download").get_attribute("href")
    with page.expect_download() as info:
        job.locator("a.download").click()
    assert info.value.suggested_filename == "clip_processed.gif"
    saved = tmp_path / "saved.gif"
    info.value.save_as(saved)
    with Image.open(saved) as gif:
        assert gif.format == "GIF" and gif.n_frames == 2
    assert href.endswith(".gif")


def test_model_choices_are_the_registry_and_the_server_default(page):
    values = page.get_by_label("Model").locator("option").evaluate_all(
        "os => os.map(o => o.value)")
    assert values[0] == ""  # the server's own default
    assert sorted(values[1:]) == sorted(SEGMENTATION_MODELS)
