"""The HTML report in a real browser: headless Chromium via playwright's Python API.

Run: ``.venv/bin/python -m pytest tests/planner/test_report_browser.py -q`` (needs the Debian
``chromium`` package; playwright's own browser download is not used). Screenshots go to
``tmp_path`` and, when ``FTPLAN_SCREENSHOT_DIR`` is set, there too.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from plan_fixtures import (
    HOSTILE_INSTANCE,
    HOSTILE_NAME,
    make_hostile_plan,
    make_no_feasible_plan,
    make_plan,
)

from planner.report.write import write_reports

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium_path() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = _chromium_path()
    if path is None:
        pytest.skip("no chromium installed: apt-get install -y chromium (Debian) to run this")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class _Page:
    """A page that records console errors, page errors, dialogs and network requests."""

    def __init__(self, browser: Any) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        self.page.on("dialog", self._on_dialog)
        self.page.on("request", lambda r: self.requests.append(r.url))

    def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, html_path: Path) -> None:
        self.page.goto(html_path.resolve().as_uri(), wait_until="load")
        self.page.wait_for_selector(".chart svg.chart-svg", state="attached", timeout=15000)

    def screenshot(self, tmp_path: Path, name: str, *, full_page: bool = False) -> Path:
        shot = tmp_path / name
        self.page.screenshot(path=str(shot), full_page=full_page)
        extra = os.environ.get("FTPLAN_SCREENSHOT_DIR")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, Path(extra) / name)
        return shot


def _assert_clean(page: _Page, html_path: Path) -> None:
    assert page.console_errors == []
    assert page.page_errors == []
    assert page.dialogs == []
    # The report is self-contained: the only load is the file itself.
    assert page.requests == [html_path.resolve().as_uri()]


def test_report_renders_charts_tables_and_recommendation(browser: Any, tmp_path: Path) -> None:
    paths = write_reports(make_plan(), tmp_path, slug="llama2-7b-200usd-fixture")
    page = _Page(browser)
    page.open(paths.html)
    _assert_clean(page, paths.html)

    charts = page.page.locator(".chart svg.chart-svg")
    assert charts.count() == 2
    for i in range(2):
        box = charts.nth(i).bounding_box()
        assert box is not None and box["width"] > 200 and box["height"] > 200
    # Points were drawn: 6 candidates + Pareto front (2) + the star, and the memory bars.
    assert page.page.locator("#chart-cost-time .point").count() >= 9
    # 4 bars (full 1×H100 that does not fit, full FSDP, LoRA, QLoRA) × 6 components.
    assert page.page.locator("#chart-memory .bar").count() == 4 * 6
    legend = page.page.locator("#chart-cost-time .legend-item text").all_text_contents()
    assert "Pareto front" in legend and "recommended" in legend
    # Hovering a bar shows its value.
    tip = page.page.locator("#chart-tip")
    assert tip.is_hidden()
    page.page.locator("#chart-memory .bar").first.hover()
    assert tip.is_visible() and "weights: 25.10 GiB" in tip.inner_text()

    recommendation = page.page.locator("#recommendation")
    assert recommendation.is_visible()
    assert "$13.38" in recommendation.inner_text()
    assert "gpu_1x_h100_sxm5" in recommendation.inner_text()
    table = page.page.locator("#candidates")
    assert table.is_visible()
    assert table.locator("tbody tr").count() == 6
    assert "over deadline" in table.inner_text()

    shot = page.screenshot(tmp_path, "report.png", full_page=True)
    assert shot.stat().st_size > 10_000


def test_hostile_model_name_shows_as_text_and_runs_nothing(browser: Any, tmp_path: Path) -> None:
    paths = write_reports(make_hostile_plan(), tmp_path, slug="hostile")
    page = _Page(browser)
    page.open(paths.html)
    _assert_clean(page, paths.html)
    assert page.page.locator("h1 .model-name").inner_text() == HOSTILE_NAME
    assert page.page.title() == f"ftplan plan: {HOSTILE_NAME}"
    assert HOSTILE_NAME in page.page.locator("#assumptions").inner_text()
    assert HOSTILE_INSTANCE in page.page.locator("#recommendation").inner_text()
    # No element was injected: the only script is the report's own, no <b>, no <img>.
    assert page.page.locator("script").count() == 1
    assert page.page.locator("b").count() == 0
    assert page.page.locator("img").count() == 0
    # The chart's hover text for the recommended point shows the instance type literally.
    star = page.page.locator("#chart-cost-time .trace").last.locator(".point")
    star.hover(force=True)
    page.page.wait_for_selector("#chart-tip", state="visible", timeout=5000)
    hover = page.page.locator("#chart-tip").text_content()
    assert hover is not None and HOSTILE_INSTANCE in hover
    assert page.page.locator("#chart-cost-time image").count() == 0
    assert page.dialogs == []
    page.screenshot(tmp_path, "report-hostile.png")


def test_no_feasible_plan_renders(browser: Any, tmp_path: Path) -> None:
    paths = write_reports(make_no_feasible_plan(), tmp_path, slug="no-feasible")
    page = _Page(browser)
    page.open(paths.html)
    _assert_clean(page, paths.html)
    assert "No feasible plan" in page.page.locator("#recommendation").inner_text()
    assert "$5.00" in page.page.locator("#warnings").inner_text()
    page.screenshot(tmp_path, "report-no-feasible.png")
