"""A real browser (headless Chromium from the distribution, driven by Playwright) opens the app,
clicks Generate and sees images in the gallery. Screenshots go to ``artifacts/`` (kept by CI);
with ``CM_SCREENSHOTS=docs/screenshots`` one screenshot per tab is also written there for the README.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from app_server import ROOT, server_fixture

CHROMIUM = os.environ.get("CM_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "artifacts"
TABS = [("Generate", "generate"), ("Colorize", "colorize"), ("Inpaint", "inpaint"),
        ("Super-resolution", "super_resolve"), ("Interpolate", "interpolate"), ("Denoise", "denoise"),
        ("Stroke-guided", "stroke_guided")]

if not Path(CHROMIUM).is_file() and not shutil.which("chromium"):
    pytest.skip(f"chromium is not installed ({CHROMIUM}); install it with apt-get install chromium "
                "(bash installations.sh --dev does)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")


server = server_fixture("browser-app")


@pytest.fixture(scope="module")
def page(server):
    exe = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=ARGS, headless=True)
        pg = browser.new_page(viewport={"width": 1280, "height": 1000})
        pg.set_default_timeout(30_000)
        pg.goto(server.url, wait_until="domcontentloaded")
        pg.get_by_role("button", name="Generate", exact=True).first.wait_for(state="visible")
        yield pg
        browser.close()


def _shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(out), full_page=True)
    extra = os.environ.get("CM_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(extra) / out.name)
    return out


def test_click_generate_shows_images_in_the_gallery(page):
    page.locator("#generate-btn").click()
    imgs = page.locator("#gallery img")
    imgs.first.wait_for(state="visible")
    assert imgs.count() >= 1
    assert page.locator("#generate-info").inner_text().find("images/s") >= 0
    shot = _shot(page, "generate")
    assert shot.stat().st_size > 10_000


def test_every_tab_renders(page):
    for label, name in TABS[1:]:
        page.get_by_role("tab", name=label).click()
        page.wait_for_timeout(300)
        _shot(page, name)
    page.get_by_role("tab", name="Generate").click()
    assert all((ARTIFACTS / f"{n}.png").is_file() for _, n in TABS)


def test_compare_runs_the_gallery_seeds_even_after_randomise(page):
    page.get_by_role("tab", name="Generate").click()
    page.locator("#generate-btn").click()
    info = page.locator("#generate-info")
    info.filter(has_text="images/s").wait_for()
    seeds = re.search(r"\((seeds? [0-9-]+)\)", info.inner_text()).group(1)  # "seeds 0-3"
    page.get_by_role("button", name="Randomise").first.click()
    page.get_by_role("button", name="Compare with the EDM teacher (same seeds)").click()
    teacher = page.locator("#teacher-info")
    teacher.filter(has_text="images/s").wait_for()
    assert f"({seeds})" in teacher.inner_text(), (seeds, teacher.inner_text())


def test_interpolate_shows_only_the_inputs_of_its_mode(page):
    page.get_by_role("tab", name="Interpolate").click()
    seeds, images = page.locator("#interp-seeds"), page.locator("#interp-images")
    seeds.wait_for(state="visible")
    assert not images.is_visible()
    page.get_by_label("images", exact=True).check()
    images.wait_for(state="visible")
    assert not seeds.is_visible()
    page.get_by_label("seeds", exact=True).check()
    seeds.wait_for(state="visible")
    assert not images.is_visible()
    page.get_by_role("tab", name="Generate").click()
