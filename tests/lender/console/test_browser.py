"""A risk officer's morning in a real browser: log in, read the portfolio, open an asset, acknowledge, watch a new alarm arrive.

Debian's chromium, driven by Playwright's Python package pointed at
/usr/bin/chromium (Playwright cannot download its own browser here;
`make test` installs chromium with the other Debian peers). Each page is
photographed into reports/console/ (the test report directory next to
reports/hil/): look at them.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from telemetry.alarms import RAISED, SEVERITY, alarm_name
from telemetry.senml import Record
from tests.kit.console import PASSWORD

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REPORT = Path(__file__).resolve().parents[3] / "reports" / "console"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs chromium (apt-get install chromium; make test installs it)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


def shot(page, name: str) -> Path:
    REPORT.mkdir(parents=True, exist_ok=True)
    path = REPORT / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def lender_key(pledged) -> str:
    from lender.enrollment.technicians import lender_identity

    return lender_identity(pledged.data_dir).public_key.hex()


def log_in(page, console, name: str) -> None:
    page.goto(f"{console.url}/")
    assert "/login" in page.url
    shot(page, "login")
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("table.portfolio")


def test_an_operator_reads_the_portfolio_acknowledges_an_alarm_and_sees_a_new_one_arrive_live(page, console, pledged,
                                                                                            tmp_path):
    log_in(page, console, "otto")
    rows = page.locator("table.portfolio tbody tr")
    assert rows.count() == 4
    assert rows.nth(0).locator(".badge").inner_text() == "ALARM"       # worst first
    assert rows.nth(1).locator(".badge").inner_text() == "SILENT"
    assert "stale" in rows.nth(1).get_attribute("class")                # last seen greyed
    assert page.locator(".card.ALARM b").inner_text() == "1"
    shot(page, "portfolio")

    page.select_option("select[name=state]", "OK")                     # filter, without reloading the page
    expect(rows).to_have_count(1)
    assert "pallets-3" in page.locator("table.portfolio tbody").inner_text()
    page.select_option("select[name=state]", "")
    expect(rows).to_have_count(4)

    page.click("text=cold-store")
    page.wait_for_selector("svg.map")
    assert page.locator("svg.map circle.fence").count() == 1
    assert page.locator("svg.map circle.fix").count() == 8
    assert page.locator("svg.chart polyline.series").count() >= 1
    assert "UNEXPLAINED" not in page.inner_text("body")
    shot(page, "asset")

    page.fill("input[aria-label='note for alarm.door.cold-store']", "site manager called: delivery at 05:40")
    page.click("text=Acknowledge")
    page.wait_for_selector("text=acknowledged by otto")
    page.fill("input[aria-label^='note for gap seq']", "overflow during the modem outage, confirmed")
    page.click("text=Mark reviewed")
    page.wait_for_selector("text=reviewed by otto")
    shot(page, "asset-acknowledged")
    with page.expect_download() as download:
        page.click("a.download")
    assert download.value.suggested_filename == "gw-cold.bundle.json"
    bundle = tmp_path / "gw-cold.bundle.json"
    download.value.save_as(bundle)
    verified = subprocess.run([sys.executable, "-m", "pledgewatch", "lender", "verify", str(bundle), "--lender-key",
                               lender_key(pledged)], capture_output=True, text=True, timeout=60)
    # the bundle is the log's own: its proofs check against the lender's key alone
    assert "ok   proof: all" in verified.stdout and "ok   checkpoint:" in verified.stdout, verified.stdout
    with page.expect_download() as download:
        page.click("a.download-rows")
    assert download.value.suggested_filename == "gw-cold.jsonl"

    page.goto(f"{console.url}/")
    page.wait_for_selector("table.portfolio")
    page.evaluate("window.sameDocument = true")
    pallets = pledged.gateways["gw-pallets"]
    name, t = alarm_name("tamper", "pallets-3"), pledged.tick()
    pledged.deliver(pallets, pallets.sign([Record(name, string=RAISED, time=t),
                                           Record(f"{name}.severity", string=SEVERITY["tamper"], time=t)]))
    page.wait_for_selector("text=alarm.tamper.pallets-3", timeout=15_000)   # pushed by server-sent events
    assert page.evaluate("window.sameDocument") is True                     # no reload happened
    assert page.locator(".card.ALARM b").inner_text() == "2"
    shot(page, "portfolio-live")


def test_a_viewer_sees_no_buttons_and_an_admin_sees_the_audit_log(page, console, pledged):
    log_in(page, console, "vera")
    page.goto(f"{console.url}/assets/gw-cold/cold-store")
    assert page.locator("text=Acknowledge").count() == 0
    assert page.locator("text=Mark reviewed").count() == 0
    mill = pledged.machine()               # a machine on a scale joins while the console runs
    console.wait_for(lambda: [(r.last_seq, r.state) for r in console.console.portfolio.rows() if r.asset == "mill-4"]
                     == [(mill.seq, "OK")], what="mill-4 judged on all it signed")
    page.goto(f"{console.url}/assets/gw-mill/mill-4")
    expect(page.locator("svg.chart[aria-label=run-hours] rect.bar")).to_have_count(3)
    assert page.locator("svg.chart[aria-label=weight] polyline.series").count() == 1
    shot(page, "asset-machine")
    page.click("text=Log out")
    log_in(page, console, "ada")
    page.goto(f"{console.url}/admin")
    assert "login" in page.locator("table").nth(2).inner_text()
    shot(page, "admin")
