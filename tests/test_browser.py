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


server = server_fixture()


@pytest.fixture(scope="module")
def browser():
    exe = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=ARGS, headless=True)
        yield b
        b.close()


def _open(browser, server, width: int, height: int):
    pg = browser.new_page(viewport={"width": width, "height": height})
    pg.set_default_timeout(30_000)
    pg.server_errors = []  # every HTTP 5xx the page saw
    pg.on("response", lambda r: r.status >= 500 and pg.server_errors.append(f"{r.status} {r.url}"))
    pg.goto(server.url, wait_until="domcontentloaded")
    pg.get_by_role("button", name="Generate", exact=True).first.wait_for(state="visible")
    return pg


@pytest.fixture(scope="module")
def page(browser, server):
    """A desktop window, 1280 px wide."""
    pg = _open(browser, server, 1280, 1000)
    yield pg
    pg.close()


@pytest.fixture(scope="module")
def phone(browser, server):
    """A phone's viewport, 390 px wide (the tabs past the second are behind "More tabs")."""
    pg = _open(browser, server, 390, 844)
    yield pg
    pg.close()


def _tab(page, label: str) -> None:
    tab = page.get_by_role("tab", name=label, exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
    else:
        page.get_by_role("button", name="More tabs").click()
        page.locator(".overflow-dropdown button", has_text=re.compile(f"^{re.escape(label)}$")).first.click()
    page.wait_for_timeout(300)


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
    assert _shot(page, "generate").stat().st_size > 10_000


#: the narrowest rendered width of a result image / a gallery thumbnail, in CSS px
MIN_RESULT = {1280: 256, 390: 300}
MIN_THUMB = {1280: 128, 390: 160}


def _widths(locator, page) -> list[float]:
    """The rendered widths of the visible matches, once the layout has settled (two readings
    200 ms apart agree: a gallery being replaced by a new run measures 0 for a moment)."""
    def read() -> list[float]:
        return [round(e.bounding_box()["width"]) for e in locator.all() if e.is_visible()]
    last = read()
    for _ in range(25):
        page.wait_for_timeout(200)
        now = read()
        if now == last and now and min(now) > 0:
            break
        last = now
    return last


def _run_first_example(page, label: str):
    """On tab ``label``: click its first example (the app caches examples lazily, so the click
    runs it and shows its outputs), wait for the results; the visible tab panel."""
    _tab(page, label)
    panel = page.locator("[role=tabpanel]:visible").first
    panel.locator("tr.tr-body").first.click()
    if label == "Interpolate":
        panel.locator("#frames img").first.wait_for()
        panel.locator(".result img").first.wait_for()
    else:
        sync_api.expect(panel.locator(".result img")).to_have_count(3)  # before, after, reference
    return panel


def test_compare_runs_the_gallery_seeds_even_after_randomise(page):
    page.get_by_role("tab", name="Generate").click()
    info = page.locator("#generate-info")
    before = info.inner_text()  # an earlier test's result may still be shown: wait for this run's
    page.locator("#generate-btn").click()
    sync_api.expect(info).not_to_have_text(before, timeout=60_000)
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


def _toast(page) -> str:
    """The text of the newest error toast (waits for one), then closes every toast and waits until
    they are gone: a closing toast stays in the page while it fades, and the next call would read
    it instead of the toast its own click brings."""
    toast = page.locator(".toast-body").last
    toast.wait_for()
    text = toast.inner_text()
    for close in page.locator(".toast-close").all():
        close.click()
    sync_api.expect(page.locator(".toast-body")).to_have_count(0)
    return text


#: per tab: (control's label, what is typed into its number box, the message that refuses it)
OUT_OF_RANGE = {
    "Generate": [("Batch size", "1000", "Batch size must be in [1, 16], got 1000"),
                 ("Steps (network evaluations)", "100", "Steps must be in [1, 39], got 100"),
                 ("Dropout (inference)", "5", "Dropout must be in [0, 0.9], got 5")],
    **{tab: [("Steps (network evaluations)", "100", "Steps must be in [1, 39], got 100")]
       for tab in ("Colorize", "Inpaint", "Super-resolution")},
    "Interpolate": [("Frames", "1000", "Frames must be in [2, 32], got 1000"),
                    ("Steps (network evaluations)", "100", "Steps must be in [1, 39], got 100")],
    "Denoise": [("Noise level (std in grey levels of 255)", "300", "Noise level must be in [0, 255], got 300"),
                ("Steps", "9", "Steps must be in [1, 8], got 9")],
    "Stroke-guided": [("Noise level sigma (higher follows the strokes less)", "50",
                       "Noise level sigma must be in [0.5, 20], got 50"), ("Steps", "9", "Steps must be in [1, 8], got 9")],
}


def _refusal(page, panel, box, typed: str) -> str:
    """Type ``typed`` into ``box``, press the tab's button: the toast's text; the box is restored."""
    before = box.input_value()
    box.fill(typed)
    if box.get_attribute("type") == "number":
        box.press("Enter")
    panel.locator("button.primary:visible").first.click()
    text = _toast(page)
    box.fill(before)
    if box.get_attribute("type") == "number":
        box.press("Enter")
    return text


#: the tabs with an expert ts box
TS_TABS = ("Generate", "Colorize", "Inpaint", "Super-resolution", "Interpolate")


@pytest.fixture(scope="module", params=["page", "phone"])
def tour(request) -> dict:
    """Every tab visited once at one width (desktop 1280 px, phone 390 px): its example run (a
    Generate click on Generate), the rendered widths of its results, a screenshot (artifacts/ and
    $CM_SCREENSHOTS), then, on the desktop, each out-of-range value and a bad ts typed and refused
    (the server's refusal and the toast that shows it do not depend on the width). What was seen:
    ``sizes`` {tab: widths}, ``refusals`` {(tab, control): (expected message, toast)}."""
    from cm_core.service import parse_ts
    with pytest.raises(ValueError) as e:
        parse_ts("a,b", 40)
    pg = request.getfixturevalue(request.param)
    suffix = "" if request.param == "page" else "_phone"
    sizes, refusals = {}, {}
    for label, name in TABS:
        if label == "Generate":
            _tab(pg, label)
            pg.locator("#generate-btn").click()
            pg.locator("#gallery img").first.wait_for()
            panel = pg.locator("[role=tabpanel]:visible").first
            sizes[name] = _widths(pg.locator("#gallery img"), pg)
        else:
            panel = _run_first_example(pg, label)
            sizes[name] = _widths(panel.locator(".result img"), pg)
            if label == "Interpolate":
                sizes["frames"] = _widths(panel.locator("#frames img"), pg)
        _shot(pg, name + suffix)
        if request.param != "page":
            continue
        for control, typed, message in OUT_OF_RANGE[label]:
            box = panel.locator(f"input[type=number][aria-label='number input for {control}']").first
            refusals[(label, control)] = (message, _refusal(pg, panel, box, typed))
        if label in TS_TABS:
            refusals[(label, "ts")] = (str(e.value), _refusal(pg, panel, panel.get_by_label("ts (experts)").first, "a,b"))
    _tab(pg, "Generate")
    return {"width": pg.viewport_size["width"], "sizes": sizes, "refusals": refusals,
            "server_errors": list(pg.server_errors)}


def test_every_tab_shows_its_results_at_a_readable_size(tour):
    """Each result image is >= 256 CSS px wide on a desktop and nearly the full width (>= 300 px)
    of a 390 px phone; gallery thumbnails >= 128 / 160 px (at most two columns on the phone)."""
    sizes, width = tour["sizes"], tour["width"]
    small = {k: min(v) for k, v in sizes.items()
             if min(v) < (MIN_THUMB if k in ("generate", "frames") else MIN_RESULT)[width]}
    assert not small, (width, small, sizes)
    assert len(sizes["colorize"]) == 3 and not tour["server_errors"], tour["server_errors"]


@pytest.mark.parametrize("tour", ["page"], indirect=True)
def test_every_tab_refuses_bad_values_with_the_whole_message(tour):
    """On every tab, a number typed past a control's range (the slider would snap the box back and
    run the clamped value) is refused with a message naming the range, and a bad ts gives the
    whole parse error (nothing lost as an HTML tag, no stray quotes). No server error."""
    seen = tour["refusals"]
    wrong = {k: toast for k, (message, toast) in seen.items() if message not in toast}
    assert not wrong and len(seen) == sum(map(len, OUT_OF_RANGE.values())) + len(TS_TABS), wrong
    assert not tour["server_errors"], tour["server_errors"]


def _pick(page, name: str) -> None:
    """Choose ``name`` in the model picker (type to filter, click its option)."""
    box = page.locator("#model input")
    box.click()
    box.fill(name)
    page.locator("[data-testid=dropdown-option]", has_text=name).first.wait_for()
    box.press("Enter")
    page.wait_for_timeout(500)


def _error_badges(page) -> int:
    """The visible "Error" status badges (a tab not shown keeps those of its own last failed run)."""
    return sum(e.is_visible() for e in page.get_by_text("Error", exact=True).all())


@pytest.mark.parametrize("viewport", ["page", "phone"])
def test_a_model_not_on_disk_leaves_no_error_and_the_tabs_keep_working(request, viewport):
    page = request.getfixturevalue(viewport)
    _tab(page, "Generate")
    labels = page.locator("#model input")
    labels.click()
    page.locator("[data-testid=dropdown-option]").first.wait_for()
    options = [o.get_attribute("aria-label") for o in page.locator("[data-testid=dropdown-option]").all()]
    page.keyboard.press("Escape")
    assert options[0].startswith("cd_digits32") and options[0].endswith("on disk"), options
    assert any("cd_imagenet64_l2" in o and "needs a download" in o for o in options), options
    _pick(page, "cd_imagenet64_l2")
    info = page.locator("#model-info")
    info.filter(has_text="cannot run here until it is downloaded").wait_for()
    assert "The tabs keep using cd_digits32" in info.inner_text()
    gen_info = page.locator("#generate-info")
    page.locator("#generate-btn").click()
    gen_info.filter(has_text="images/s").wait_for()
    assert _error_badges(page) == 0
    _pick(page, "ct_digits32")
    info.filter(has_text="ct_digits32").wait_for()
    page.locator("#generate-btn").click()
    gen_info.filter(has_text="images/s").wait_for()
    assert _error_badges(page) == 0 and not page.server_errors, page.server_errors
    _pick(page, "cd_digits32")


@pytest.mark.parametrize("viewport", ["page", "phone"])
def test_live_mode_runs_only_the_last_of_quick_seed_changes(request, viewport):
    """With Live on, five quick seed changes start at most two runs (requests with Live on: a
    change replaced within 200 ms is sent with Live off and runs nothing), and the gallery ends
    on the last seed's images."""
    page = request.getfixturevalue(viewport)
    _tab(page, "Generate")
    page.locator("#generate-btn").click()
    page.locator("#generate-info").filter(has_text="images/s").wait_for()
    joins: list[str] = []
    def live_join(r) -> None:
        if "queue/join" in r.url and ",true]" in (r.post_data or ""):
            joins.append(r.post_data)
    page.on("request", live_join)
    page.locator("#live input").check()
    seed = page.get_by_label("Seed", exact=True).first
    start = int(seed.input_value())
    seed.evaluate("""async (box) => {  // five quick moves, 30 ms apart, as a dragged control makes
        for (let k = 1; k <= 5; k++) {
            box.value = String(Number(box.value) + 1);
            box.dispatchEvent(new Event("input", {bubbles: true}));
            await new Promise((r) => setTimeout(r, 30));
        }
    }""")
    assert seed.input_value() == str(start + 5)
    page.locator("#generate-info").filter(has_text=f"(seeds {start + 5}-").wait_for()
    page.wait_for_timeout(1000)  # any run still to come would have started by now
    page.locator("#live input").uncheck()
    seed.fill(str(start))
    page.remove_listener("request", live_join)
    assert 1 <= len(joins) <= 2, joins


def test_the_inpaint_example_shows_its_mask(page):
    """The example's painted region (magenta, the right half) is visible in the editor."""
    import io

    import numpy as np
    from PIL import Image
    _tab(page, "Inpaint")
    panel = page.locator("[role=tabpanel]:visible").first
    panel.locator("tr.tr-body").first.click()
    page.wait_for_timeout(1500)
    shot = Image.open(io.BytesIO(page.locator("#inpaint-editor").screenshot())).convert("RGB")
    px = np.asarray(shot).astype(int)
    magenta = (px[..., 0] > 200) & (px[..., 1] < 60) & (px[..., 2] > 200)
    _tab(page, "Generate")
    assert magenta.mean() > 0.02, magenta.mean()


def test_the_api_page_named_in_the_readme_opens(browser, server):
    """The README's API page: the footer's "Use via API" opens the docs with the endpoints;
    gradio_api/info serves the same as JSON."""
    import json
    import urllib.request
    readme = (ROOT / "README.md").read_text()
    assert "**Use via API**" in readme and "gradio_api/info" in readme
    with urllib.request.urlopen(server.url + "gradio_api/info", timeout=10) as r:
        assert "/generate" in json.load(r)["named_endpoints"]
    pg = _open(browser, server, 1280, 900)
    pg.get_by_text("Use via API").click()
    pg.get_by_text("/generate_steps").first.wait_for()
    assert "view=api" in pg.url
    pg.close()
