"""The console's station tree in a real browser against a real `vms serve` (issue 19): towns in the county's
order, and a station disabled in the catalogue shown as 停用 and counted apart from the offline cameras."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.serve_support import REPO, running_serve
from vms.catalog.towns import TOWN_NAMES

pytestmark = pytest.mark.slow  # a real vms serve and Chromium: not in scripts/test.sh --fast

# A declared test dependency: missing, the browser tests must fail, not quietly skip.
import playwright.sync_api as playwright_api  # noqa: E402

from tests.browser_support import CHROMIUM_ARGS  # noqa: E402
from tests.test_console_browser import _login  # noqa: E402

DISABLED = "pingshan-v02"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`vms serve` with one simulated camera (pingshan-town) over the shipped catalogue, DISABLED disabled."""
    root = tmp_path_factory.mktemp("console-status")
    doc = yaml.safe_load((REPO / "config" / "stations.yaml").read_text("utf-8"))
    next(st for st in doc["stations"] if st["id"] == DISABLED)["enabled"] = False
    catalogue = root / "stations.yaml"
    catalogue.write_text(yaml.safe_dump(doc, allow_unicode=True), "utf-8")
    with running_serve(root, cameras=1, footage_seconds=0, stations_file=catalogue) as srv:
        yield srv


def test_tree_orders_towns_as_the_county_and_counts_a_disabled_station_as_disabled(server):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(base_url=server["base"]).new_page()
            _login(page, "wang-admin")
            towns = page.eval_on_selector_all("#tree details[data-town]", "els => els.map(e => e.dataset.town)")
            assert towns == TOWN_NAMES

            link = page.locator(f"#tree a[href='#/station/{DISABLED}']")
            assert link.get_attribute("data-state") == "disabled"
            assert link.locator("i.dot").get_attribute("title") == "停用"
            # 平山街道: the disabled station counted as 停1, apart from the offline ones (the stations with no
            # camera yet report nothing: 离), and each station counted once.
            town = "#tree a.station-link[data-town='平山街道']"
            stations = page.locator(town).count()
            counts = page.inner_text("#tree details[data-town='平山街道'] .counts")
            m = re.fullmatch(r"(\d+)站 · 录(\d+) 离(\d+) 关(\d+) 障(\d+) 停(\d+)", counts.strip())
            assert m, counts
            total, recording, offline, closed, faults, disabled = map(int, m.groups())
            assert (total, disabled) == (stations, 1), counts
            assert total == recording + offline + closed + faults + disabled, counts
            assert offline == page.locator(f"{town}[data-state=offline]").count() >= stations - 2, counts

            page.click("#tree details[data-town='平山街道'] summary")  # the town opens; then its station
            page.click(f"#tree a[href='#/station/{DISABLED}']")
            page.wait_for_selector("#live-msg")
            assert "停用" in page.inner_text("table.kv")
            assert page.inner_text("#live-msg") == "站点已停用"
        finally:
            browser.close()
