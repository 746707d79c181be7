"""The admin delivery dashboard (GetDeliveryStats) in headless Chromium against `sms-gateway dev`.

One stack (paced at SMS_SENDER_MPS=2, so a burst leaves a backlog to see) and one browser for the module. A burst
of sends with some failed and undelivered destinations (the simulator's `outcomes` rules) must show in the
window's totals, the error-code table (with the server's descriptions), the charts and their screen-reader tables,
at desktop and phone width, under the UI's Content-Security-Policy. SMS_UPDATE_SCREENSHOTS=1 rewrites
docs/screenshots/delivery-dashboard.png.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import grpc
import pytest
from sms.v1 import sms_pb2, sms_pb2_grpc, types_pb2

from tests.support.browser import (
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    PROBE_SCRIPT,
    SCREENSHOTS,
    chromium_path,
    csp_violations,
    screenshot,
    skip_or_fail_without_browser,
    update_screenshots,
)
from tests.support.dev_stack import DevStack, dev_stack, patch_rules
from tests.support.polling import eventually

T = 10_000  # ms: Playwright's default wait for anything the stack does at once
# The UI asks GetDeliveryStats at most once per 5 s on live events; a little slack for timer jitter.
MIN_GAP_S = 4.8
DELIVERED = [f"+14155550{n}" for n in range(201, 213)]  # 12 well-behaved destinations
FAILED = ["+14155550231", "+14155550232"]  # failed, error 30008 (the simulator's default for "failed")
UNDELIVERED = ["+14155550241", "+14155550242"]  # undelivered, error 30003
FINAL = {
    types_pb2.MESSAGE_STATUS_DELIVERED,
    types_pb2.MESSAGE_STATUS_FAILED,
    types_pb2.MESSAGE_STATUS_UNDELIVERED,
}


def sel(testid: str, **attrs: str) -> str:
    """A CSS selector for a data-testid with data-* attributes, e.g. sel("error-row", code="30008")."""
    extra = "".join(f'[data-{k.replace("_", "-")}="{v}"]' for k, v in attrs.items())
    return f'[data-testid="{testid}"]{extra}'


# Fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack() -> Iterator[DevStack]:
    skip_or_fail_without_browser()
    with dev_stack({"SMS_SENDER_MPS": "2"}) as s:
        yield s


@pytest.fixture(scope="module")
def browser(stack: DevStack) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class Api:
    """The SmsService over plain gRPC as the admin: to arrange data and check the UI against."""

    def __init__(self, stack: DevStack, channel: grpc.Channel) -> None:
        self.stack = stack
        self.stub = sms_pb2_grpc.SmsServiceStub(channel)

    def send(self, to: str, body: str) -> types_pb2.Message:
        req = sms_pb2.SendRequest(to=to, body=body, request_id=f"dashboard-{time.monotonic_ns()}")
        resp = self.stub.Send(req, metadata=self.stack.metadata("admin"), timeout=10, wait_for_ready=True)
        return resp.message

    def status(self, message_id: str) -> types_pb2.MessageStatus.ValueType:
        req = sms_pb2.GetMessageRequest(message_id=message_id)
        return self.stub.GetMessage(req, metadata=self.stack.metadata("admin"), timeout=10).message.status


@pytest.fixture(scope="module")
def api(stack: DevStack) -> Iterator[Api]:
    with grpc.insecure_channel(stack.grpc_target) as channel:
        yield Api(stack, channel)


class Pages:
    """Signed-in pages, each in its own browser context with the probe (CSP violations); closed after the test."""

    def __init__(self, stack: DevStack, browser: Any) -> None:
        self.stack = stack
        self.browser = browser
        self.contexts: list[Any] = []

    def open_as(self, user: str, viewport: dict[str, int] = DESKTOP) -> Any:
        ctx = self.browser.new_context(viewport=viewport, device_scale_factor=1)
        ctx.set_default_timeout(T)
        ctx.add_init_script(PROBE_SCRIPT)
        # Room for every call's resource timing (the default keeps 250).
        ctx.add_init_script("performance.setResourceTimingBufferSize(100000)")
        self.contexts.append(ctx)
        page = ctx.new_page()
        page.goto(self.stack.web_url + "/")
        page.get_by_test_id("token-input").fill(self.stack.token(user))
        page.get_by_test_id("sign-in").click()
        page.locator(sel("connection-indicator", state="connected")).wait_for()
        return page

    def csp_violations(self) -> list[dict[str, str]]:
        return [v for ctx in self.contexts for page in ctx.pages for v in csp_violations(page)]

    def close(self) -> None:
        for ctx in self.contexts:
            ctx.close()


@pytest.fixture
def pages(stack: DevStack, browser: Any) -> Iterator[Pages]:
    p = Pages(stack, browser)
    try:
        yield p
        assert not p.csp_violations(), f"the UI broke its Content-Security-Policy: {p.csp_violations()}"
    finally:
        p.close()


# Helpers ----------------------------------------------------------------------------------------------
def totals(page: Any) -> dict[str, str]:
    """The window's sums as delivery-totals carries them (data-queued, data-sent, …)."""
    found: dict[str, str] = page.get_by_test_id("delivery-totals").evaluate("el => ({...el.dataset})")
    return found


def wait_for_totals(page: Any, expected: dict[str, int], timeout: int = 30_000) -> None:
    """Waits until delivery-totals shows at least the `expected` counts (exactly for failed and undelivered)."""
    page.wait_for_function(
        """exp => {
            const t = document.querySelector('[data-testid="delivery-totals"]')?.dataset;
            if (!t) return false;
            return Object.entries(exp).every(([k, n]) =>
                k === 'failed' || k === 'undelivered' ? Number(t[k]) === n : Number(t[k]) >= n);
        }""",
        arg=expected,
        timeout=timeout,
    )


def delivery_stats_calls(page: Any) -> list[float]:
    """When the page started each GetDeliveryStats call, in seconds of its clock (resource timing), in order."""
    starts: list[float] = page.evaluate(
        """() => performance.getEntriesByType('resource')
            .filter((e) => e.name.endsWith('/GetDeliveryStats')).map((e) => e.startTime / 1000)"""
    )
    return sorted(starts)


def chart_box(page: Any, testid: str) -> dict[str, float]:
    """The canvas of a chart: its size, its role and label, and its box's width."""
    canvas = page.locator(f'{sel(testid)} canvas[role="img"]')
    assert canvas.count() == 1, f"{testid} has no labelled canvas"
    info: dict[str, Any] = canvas.evaluate(
        """c => {
            const r = c.getBoundingClientRect();
            const box = c.closest('[data-testid]').getBoundingClientRect();
            return { width: r.width, height: r.height, left: r.left, right: r.right, top: r.top, bottom: r.bottom,
                     boxWidth: box.width, label: c.getAttribute('aria-label') };
        }"""
    )
    assert info["width"] > 0 and info["height"] > 0, (testid, info)
    assert info["width"] <= info["boxWidth"] + 1, f"{testid}'s canvas is wider than its box: {info}"
    assert info["label"], f"{testid}'s canvas has no aria-label"
    return info


def table_column_sum(page: Any, testid: str, column: str) -> int:
    """The sum of `column` (by header text) over the body rows of a fallback table."""
    total: int = page.get_by_test_id(testid).evaluate(
        """(t, column) => {
            const i = [...t.tHead.rows[0].cells].findIndex((c) => c.textContent.trim() === column);
            if (i < 0) return -1;
            return [...t.tBodies[0].rows].reduce(
                (sum, r) => sum + Number(r.cells[i].textContent.replace(/[^0-9]/g, '') || 0), 0);
        }""",
        column,
    )
    return total


def no_horizontal_overflow(page: Any) -> None:
    """The dashboard does not scroll sideways: the main pane and the dashboard fit their width, and the dashboard
    ends within the viewport. (The top bar is not the dashboard's: it is checked by the tests of the frame.)"""
    widths: list[list[float]] = page.evaluate(
        """() => [document.querySelector('.main'), document.querySelector('[data-testid=queue-dashboard]')]
            .map((el) => [el.scrollWidth, el.clientWidth])"""
    )
    for scroll, client in widths:
        assert scroll <= client + 1, f"horizontal overflow: {widths}"
    right = page.get_by_test_id("delivery-dashboard").evaluate("el => el.getBoundingClientRect().right")
    assert right <= page.viewport_size["width"], right


def open_dashboard(page: Any) -> None:
    page.get_by_test_id("tab-queue").click()
    page.get_by_test_id("delivery-dashboard").wait_for()
    page.get_by_test_id("stat-worker-health").wait_for()


# The test ---------------------------------------------------------------------------------------------
def test_delivery_dashboard_shows_a_burst_with_its_failures(stack: DevStack, pages: Pages, api: Api) -> None:
    outcomes: dict[str, Any] = {n: "failed" for n in FAILED}
    outcomes.update({n: "undelivered" for n in UNDELIVERED})
    patch_rules(stack, {"outcomes": outcomes})

    page = pages.open_as("admin")
    open_dashboard(page)
    assert page.get_by_test_id("delivery-window").input_value() == "24h"  # the default window
    # The old counters are still there beside the charts.
    for key in ("queued", "sent-last-hour", "failed-last-hour", "oldest-queued-age"):
        assert page.get_by_test_id(f"stat-{key}").get_attribute("data-value")

    # A burst: 12 to be delivered, 2 to fail, 2 to be undelivered.
    sent = [api.send(n, f"Dashboard burst {i}") for i, n in enumerate(DELIVERED + FAILED + UNDELIVERED)]
    # Paced at 2 per second, the burst waits as the sender's backlog, with its time to drain.
    row = page.locator(sel("sender-backlog"))
    row.first.wait_for(timeout=T)
    assert int(row.first.get_attribute("data-messages") or 0) > 0
    assert int(row.first.get_attribute("data-drain-seconds") or 0) >= 1

    eventually(lambda: all(api.status(m.id) in FINAL for m in sent), 60, "every message of the burst to finish")
    # Live: the totals catch up without a click (the trailing refresh after the last event).
    wait_for_totals(page, {"queued": 16, "sent": 12, "delivered": 12, "failed": 2, "undelivered": 2})
    t = totals(page)
    assert int(t["sent"]) >= 12 and int(t["delivered"]) >= 12, t
    assert int(t["failed"]) == 2 and int(t["undelivered"]) == 2, t

    # Never more often than once per 5 s on live events (when the page started each call, by its own clock).
    requests = delivery_stats_calls(page)
    gaps = [b - a for a, b in pairwise(requests)]
    assert len(requests) >= 2, requests  # the first load and at least one live refresh
    assert all(g >= MIN_GAP_S for g in gaps), f"GetDeliveryStats asked too often: gaps {gaps}"

    # The error table: each failure's code, the server's description, the count.
    failed_row = page.locator(sel("error-row", code="30008"))
    assert failed_row.get_attribute("data-count") == "2"
    assert "Unknown error" in failed_row.inner_text()
    undelivered_row = page.locator(sel("error-row", code="30003"))
    assert undelivered_row.get_attribute("data-count") == "2"
    description = undelivered_row.get_by_test_id("error-description").inner_text().strip()
    assert description and description != "Unknown code", description

    # The charts: labelled canvases of non-zero size, and their data in visually-hidden tables with captions.
    outcomes_chart = chart_box(page, "delivery-chart-outcomes")
    latency_chart = chart_box(page, "delivery-chart-latency")
    assert "2 failed" in str(outcomes_chart["label"]), outcomes_chart["label"]
    assert "p95" in str(latency_chart["label"]), latency_chart["label"]
    for testid in ("delivery-table-outcomes", "delivery-table-latency"):
        table = page.get_by_test_id(testid)
        assert table.locator("caption").inner_text().strip()
        assert table.locator("tbody tr").count() >= 24  # every hourly bucket of the day
        # Visually hidden: inside a 1 px box that clips it.
        hidden = table.evaluate(
            """t => { const box = t.parentElement, r = box.getBoundingClientRect();
                      return r.width <= 1 && r.height <= 1 && getComputedStyle(box).overflow === 'hidden' }"""
        )
        assert hidden, f"{testid} shows on screen"
    assert table_column_sum(page, "delivery-table-outcomes", "Failed") == 2
    assert table_column_sum(page, "delivery-table-outcomes", "Undelivered") == 2
    assert table_column_sum(page, "delivery-table-outcomes", "Delivered") == int(t["delivered"])
    no_horizontal_overflow(page)
    screenshot(page, "delivery-dashboard")
    if update_screenshots():
        size = (SCREENSHOTS / "delivery-dashboard.png").stat().st_size
        assert size < 200_000, f"delivery-dashboard.png is {size} bytes; keep it under 200 KB"

    # Other windows: 1 hour in 5-minute buckets, 7 days in 6-hour ones; the burst is in each.
    dashboard = page.get_by_test_id("delivery-dashboard")
    for window, buckets in (("1h", 12), ("7d", 28), ("24h", 24)):
        page.get_by_test_id("delivery-window").select_option(window)
        page.locator(f'{sel("delivery-dashboard")}[data-window="{window}"][data-state="ready"]').wait_for()
        wait_for_totals(page, {"delivered": 12, "failed": 2, "undelivered": 2})
        assert page.get_by_test_id("delivery-table-outcomes").locator("tbody tr").count() >= buckets, window
        assert dashboard.get_attribute("data-window") == window

    # Narrowed to a phone's width, the charts follow their boxes (ResizeObserver) and stack.
    page.set_viewport_size(PHONE)
    page.wait_for_function(
        "w => [...document.querySelectorAll('[data-testid^=delivery-chart-] canvas')]"
        ".every((c) => c.getBoundingClientRect().width <= w && c.getBoundingClientRect().width > 0)",
        arg=PHONE["width"],
    )
    a, b = chart_box(page, "delivery-chart-outcomes"), chart_box(page, "delivery-chart-latency")
    assert b["top"] >= a["bottom"], (a, b)  # one above the other
    assert a["right"] <= PHONE["width"] and b["right"] <= PHONE["width"], (a, b)
    no_horizontal_overflow(page)


def test_delivery_dashboard_at_phone_width(stack: DevStack, pages: Pages) -> None:
    """Opened on a phone: the same numbers, charts within the screen, nothing scrolls sideways."""
    page = pages.open_as("admin", PHONE)
    page.evaluate("() => { location.hash = '#/queue' }")
    page.get_by_test_id("delivery-dashboard").wait_for()
    page.locator(f'{sel("delivery-dashboard")}[data-state="ready"]').wait_for()
    t = totals(page)
    assert int(t["failed"]) == 2 and int(t["undelivered"]) == 2, t
    a, b = chart_box(page, "delivery-chart-outcomes"), chart_box(page, "delivery-chart-latency")
    assert 0 < a["width"] <= PHONE["width"] and 0 < b["width"] <= PHONE["width"], (a, b)
    assert b["top"] >= a["bottom"], (a, b)
    assert page.locator(sel("error-row")).count() >= 2
    no_horizontal_overflow(page)
