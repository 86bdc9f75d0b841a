"""The written report opened in real headless Chromium (playwright, Debian's /usr/bin/chromium).

Checks what only a browser can: no console or page errors, no network request
of any kind (everything is inline), all sections and figures rendered, a
screenshot that is not blank, and the hostile user name shown as text and never
executed. Skipped, with the reason, only when Chromium or playwright is missing
(CI installs both: `apt-get install -y chromium` and the pinned playwright wheel).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vglpipe.report import SECTION_IDS, render_localization_page, write_report
from report_inputs import HOSTILE_FACT, HOSTILE_USERNAME, synthetic_inputs
from vglpipe.store.atomic import atomic_write_text

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)",
                allow_module_level=True)
try:
    from playwright.sync_api import sync_playwright
except ImportError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"playwright is not installed ({exc}): pip install playwright", allow_module_level=True)

#: No background traffic from the browser itself (the machine has no internet).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
N_EXAMPLES = 4


class Visit:
    """One page load with everything the page did recorded."""

    def __init__(self, context, path: Path):
        self.url = path.resolve().as_uri()
        self.requests: list[str] = []  # every request the page issued (besides the document)
        self.blocked: list[str] = []  # requests stopped by the route
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []
        page = context.new_page()
        page.on("request", self._on_request)
        page.on("console", lambda m: m.type in ("error", "warning") and self.console_errors.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("dialog", self._on_dialog)
        page.route("**/*", self._route)
        page.goto(self.url, wait_until="load")
        page.wait_for_load_state("networkidle")
        self.page = page

    def _on_request(self, request):
        if request.url != self.url and not request.url.startswith("data:"):
            self.requests.append(request.url)

    def _on_dialog(self, dialog):
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _route(self, route):
        if route.request.url == self.url:
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> Path:
    return write_report(tmp_path_factory.mktemp("report") / "report.html",
                        **synthetic_inputs(seed=5, n_examples=N_EXAMPLES))


@pytest.fixture(scope="module")
def visit(browser, report_file):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, offline=True)
    v = Visit(context, report_file)
    yield v
    context.close()


def test_no_console_errors_and_no_page_errors(visit):
    assert visit.console_errors == []
    assert visit.page_errors == []


def test_no_network_requests(visit):
    assert visit.requests == []
    assert visit.blocked == []
    # every resource the page loaded is the document itself or inline data
    entries = visit.page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert [u for u in entries if not u.startswith("data:")] == []


def test_sections_and_figures_in_dom(visit):
    page = visit.page
    for sid in SECTION_IDS:
        loc = page.locator(f"#{sid}")
        assert loc.count() == 1, sid
        assert loc.is_visible(), sid
    assert page.locator("#summary-table tbody tr").count() == 4  # 3 experiments + chance
    # plots: curves, by-year, by-hour; one figure per example
    imgs = page.evaluate(
        "Array.from(document.images).map(i => ({id: i.closest('figure')?.id, ok: i.complete,"
        " w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width}))"
    )
    assert len(imgs) == 3 + N_EXAMPLES
    for img in imgs:
        assert img["ok"] and img["w"] > 100 and img["h"] > 100 and img["shown"] > 100, img
    figure_ids = {i["id"] for i in imgs}
    assert {"fig-curves", "fig-by-year", "fig-by-hour"} <= figure_ids
    assert page.locator("#examples-successes").is_visible()
    assert page.locator("#examples-failures").is_visible()
    assert page.locator("figure.example.success").count() + page.locator("figure.example.failure").count() == N_EXAMPLES


def _variance_ok(png: bytes, threshold: float) -> float:
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    std = float(img.reshape(-1, 3).std(axis=0).mean())
    assert std > threshold, f"screenshot looks blank (pixel std {std:.1f})"
    return std


def test_screenshot_is_not_blank(visit, tmp_path):
    full = visit.page.screenshot(full_page=True)
    _variance_ok(full, 15.0)
    height = visit.page.evaluate("document.documentElement.scrollHeight")
    assert height > 3000  # all sections laid out, not collapsed
    # each figure kind really painted something
    for sel in ("#fig-curves img", "#fig-by-year img", "figure.example.success img", "figure.example.failure img"):
        _variance_ok(visit.page.locator(sel).first.screenshot(), 10.0)


def test_hostile_username_shown_as_text_not_executed(visit):
    page = visit.page
    text = page.evaluate("document.body.innerText")
    assert HOSTILE_USERNAME in text
    assert HOSTILE_FACT in text
    assert page.get_by_text(HOSTILE_USERNAME, exact=False).count() >= 1
    assert visit.dialogs == []
    assert page.evaluate("document.scripts.length") == 0
    assert page.evaluate("document.querySelectorAll('script, iframe, object, embed').length") == 0
    handlers = page.evaluate(
        "Array.from(document.querySelectorAll('*')).flatMap(e => Array.from(e.attributes)"
        ".filter(a => a.name.startsWith('on')).map(a => e.tagName + ' ' + a.name))"
    )
    assert handlers == []
    # the only <img> elements are ours (data: URIs), none injected from metadata
    srcs = page.evaluate("Array.from(document.images).map(i => i.getAttribute('src').slice(0, 15))")
    assert all(s.startswith("data:image/") for s in srcs)


def test_localization_page_in_browser(browser, tmp_path):
    inputs = synthetic_inputs(seed=6, n_examples=1)
    path = tmp_path / "localize.html"
    atomic_write_text(path, render_localization_page("My photo", inputs["examples"][0], {"checkpoint": "abc"}))
    context = browser.new_context(viewport={"width": 1100, "height": 800}, offline=True)
    try:
        v = Visit(context, path)
        assert v.console_errors == [] and v.page_errors == [] and v.dialogs == []
        assert v.requests == [] and v.blocked == []
        assert v.page.locator("#result img").evaluate("i => i.complete && i.naturalWidth") > 500
        assert HOSTILE_USERNAME in v.page.evaluate("document.body.innerText")
        _variance_ok(v.page.locator("#result img").screenshot(), 10.0)
    finally:
        context.close()

