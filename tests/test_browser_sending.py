"""The web inbox's sending features in headless Chromium against `sms-gateway dev`: the composer's segment counter,
Send later and Cancel, quiet hours, and Retry of a failed message.

One stack (quiet hours set to a window around London's present time, so that +44 contacts are in them and the
+1 415 contacts used elsewhere are not) and one browser for the module; each test opens its own browser contexts
and uses its own phone numbers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import count
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from sms.v1 import sms_pb2, sms_pb2_grpc, types_pb2

from tests.support.browser import (
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    PROBE_SCRIPT,
    chromium_path,
    csp_violations,
    probe,
    skip_or_fail_without_browser,
)
from tests.support.dev_stack import DevStack, dev_stack, patch_rules, sim_creates, sim_messages
from tests.support.polling import eventually

T = 10_000  # ms: Playwright's default wait for anything the stack does at once

_numbers = count(10)
_london_numbers = count(500)


def new_contact() -> str:
    """A fresh contact number (+1 415 555 02xx, a fictional range) for each conversation a test makes."""
    n = next(_numbers)
    assert n < 100
    return f"+141555502{n:02d}"


def london_contact() -> str:
    """A fresh London number (Ofcom's drama range 020 7946 0xxx): in the stack's quiet hours."""
    n = next(_london_numbers)
    assert n < 1000
    return f"+44207946{n:04d}"


def london_quiet_hours() -> str:
    """SMS_QUIET_HOURS covering London's wall-clock time now (from an hour ago to two hours ahead), and not the
    time in San Francisco (eight hours behind London), so only the +44 contacts are in quiet hours."""
    now = datetime.now(ZoneInfo("Europe/London"))
    start, end = now - timedelta(hours=1), now + timedelta(hours=2)
    return f"{start:%H:%M}-{end:%H:%M}"


def sel(testid: str, **attrs: str) -> str:
    """A CSS selector for a data-testid with data-* attributes, e.g. sel("message-bubble", status="failed")."""
    extra = "".join(f'[data-{k.replace("_", "-")}="{v}"]' for k, v in attrs.items())
    return f'[data-testid="{testid}"]{extra}'


# Fixtures (the minimum of tests/test_browser.py's) -----------------------------------------------------------
@pytest.fixture(scope="module")
def stack() -> Iterator[DevStack]:
    skip_or_fail_without_browser()
    # GB joins the default US and CA: the quiet-hours test texts a London number.
    with dev_stack({"SMS_QUIET_HOURS": london_quiet_hours(), "SMS_ALLOWED_COUNTRIES": "US,CA,GB"}) as s:
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
    """The SmsService over plain gRPC as one of the demo users: to arrange data and check the UI against."""

    def __init__(self, stack: DevStack, channel: grpc.Channel) -> None:
        self.stack = stack
        self.stub = sms_pb2_grpc.SmsServiceStub(channel)

    def send(self, user: str, to: str, body: str) -> types_pb2.Message:
        resp = self.stub.Send(
            sms_pb2.SendRequest(to=to, body=body, request_id=f"sending-{time.monotonic_ns()}"),
            metadata=self.stack.metadata(user),
            timeout=10,
            wait_for_ready=True,
        )
        return resp.message

    def message(self, user: str, message_id: str) -> types_pb2.Message:
        req = sms_pb2.GetMessageRequest(message_id=message_id)
        return self.stub.GetMessage(req, metadata=self.stack.metadata(user), timeout=10).message

    def messages(self, user: str, conversation_id: str) -> list[types_pb2.Message]:
        req = sms_pb2.ListMessagesRequest(conversation_id=conversation_id, page_size=100)
        return list(self.stub.ListMessages(req, metadata=self.stack.metadata(user), timeout=10).messages)


@pytest.fixture(scope="module")
def api(stack: DevStack) -> Iterator[Api]:
    with grpc.insecure_channel(stack.grpc_target) as channel:
        yield Api(stack, channel)


class Pages:
    """Opens signed-in pages, each in its own browser context; closes them after the test."""

    def __init__(self, stack: DevStack, browser: Any) -> None:
        self.stack = stack
        self.browser = browser
        self.contexts: list[Any] = []

    def open_as(self, user: str, viewport: dict[str, int] = DESKTOP) -> Any:
        """A page on the web UI, signed in as the demo `user`, once its live stream is connected."""
        ctx = self.browser.new_context(viewport=viewport, device_scale_factor=1)
        ctx.set_default_timeout(T)
        ctx.add_init_script(PROBE_SCRIPT)
        self.contexts.append(ctx)
        page = ctx.new_page()
        page.goto(self.stack.web_url + "/")
        page.get_by_test_id("token-input").fill(self.stack.token(user))
        page.get_by_test_id("sign-in").click()
        page.locator(sel("user-id")).filter(has_text=user).wait_for(state="attached")
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


def open_thread(page: Any, conversation_id: str) -> Any:
    """Opens the thread of `conversation_id` by its route; returns the thread element."""
    page.evaluate("id => { location.hash = '#/c/' + id }", conversation_id)
    thread = page.locator(sel("thread", conversation_id=conversation_id))
    thread.wait_for()
    return thread


def bubble(page: Any, text: str) -> Any:
    return page.locator(sel("message-bubble")).filter(has_text=text)


def wait_js(page: Any, expression: str, arg: Any = None, timeout: int = T) -> Any:
    """Waits until the JS `expression` (a function of `arg`) is truthy in the page; returns its value."""
    return page.wait_for_function(expression, arg=arg, timeout=timeout).json_value()


def counter_text(page: Any) -> str:
    return str(page.get_by_test_id("composer-counter").inner_text()).strip()


def wait_counter(page: Any, expected: str) -> None:
    """Waits until the composer's counter reads exactly `expected` ("" for empty)."""
    wait_js(
        page,
        "t => document.querySelector('[data-testid=composer-counter]').textContent.trim() === t",
        expected,
    )


# The browser's local time, as a datetime-local value, `minutes` from now (the picker takes the viewer's time).
LOCAL_INPUT_JS = """minutes => {
    const d = new Date(Date.now() + minutes * 60_000);
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}"""


# 1. The counter --------------------------------------------------------------------------------------------
def test_the_counter_shows_characters_segments_and_the_character_that_forces_ucs2(
    stack: DevStack, pages: Pages, api: Api
) -> None:
    sent = api.send("alice", new_contact(), "Your order is ready for pickup.")
    page = pages.open_as("alice", PHONE)  # phone width: the line must stay readable at 390 px
    open_thread(page, sent.conversation_id)
    counter = page.get_by_test_id("composer-counter")
    assert counter.get_attribute("aria-live") == "polite"
    assert counter_text(page) == ""  # nothing to count yet
    composer = page.get_by_test_id("composer-input")

    composer.fill("Hello")
    wait_counter(page, "5 chars · 1 segment · GSM-7")
    # é is in the GSM 03.38 alphabet: still GSM-7.
    composer.press_sequentially(" café")
    wait_counter(page, "10 chars · 1 segment · GSM-7")
    # ê is not: the whole message becomes UCS-2 (70 per segment), and the counter says which character did it.
    composer.press_sequentially(" crêpe")
    wait_counter(page, "16 chars · 1 segment · UCS-2 because of “ê”")
    assert page.get_by_test_id("counter-char").inner_text() == "“ê”"
    assert counter.get_attribute("data-encoding") == "ucs2"

    composer.fill("a" * 74 + "ê")
    wait_counter(page, "75 chars · 2 segments · UCS-2 because of “ê”")
    # An invisible character is named by its code point, readably.
    composer.fill("Hello\tthere")
    wait_counter(page, "11 chars · 1 segment · UCS-2 because of U+0009 tab")

    # GSM-7: 160 fit one segment, 161 need two.
    composer.fill("x" * 160)
    wait_counter(page, "160 chars · 1 segment · GSM-7")
    composer.press_sequentially("y")
    wait_counter(page, "161 chars · 2 segments · GSM-7")
    # Readable at phone width: the composer does not overflow sideways.
    assert page.evaluate(
        "() => { const f = document.querySelector('.composer'); return f.scrollWidth <= f.clientWidth; }"
    )
    assert counter.is_visible()

    # Notes are never texted: no counter in note mode, back when it is off.
    page.get_by_test_id("note-toggle").click()
    wait_counter(page, "")
    page.get_by_test_id("note-toggle").click()
    wait_counter(page, "161 chars · 2 segments · GSM-7")
    composer.fill("")
    wait_counter(page, "")


# 2. Send later, then cancel -----------------------------------------------------------------------------------
def test_a_message_scheduled_for_later_shows_when_and_cancel_keeps_it_from_twilio(
    stack: DevStack, pages: Pages, api: Api
) -> None:
    contact = new_contact()
    sent = api.send("alice", contact, "Thanks for your booking.")
    page = pages.open_as("alice")
    open_thread(page, sent.conversation_id)
    bubble(page, "Thanks for your booking").wait_for()

    text = "Reminder: your appointment is in one hour."
    page.get_by_test_id("composer-input").fill(text)
    page.get_by_test_id("send-later-toggle").click()
    picker = page.get_by_test_id("send-later-input")
    picker.wait_for()
    assert page.get_by_test_id("send-later-toggle").get_attribute("aria-expanded") == "true"
    # The picker offers now to 35 days ahead, and Send waits for a time.
    assert picker.get_attribute("type") == "datetime-local"
    assert picker.get_attribute("min") and picker.get_attribute("max")
    assert page.get_by_test_id("send-button").is_disabled()
    # A time in the past is refused before any call.
    picker.fill(page.evaluate(LOCAL_INPUT_JS, -60))
    wait_js(page, "() => document.querySelector('[data-testid=send-later-hint]').classList.contains('error')")
    assert page.get_by_test_id("send-button").is_disabled()

    picker.fill(page.evaluate(LOCAL_INPUT_JS, 10))
    send = page.get_by_test_id("send-button")
    wait_js(page, "() => !document.querySelector('[data-testid=send-button]').disabled")
    assert send.get_attribute("aria-label") == "Schedule"
    send.click()

    scheduled = page.locator(sel("message-bubble", status="scheduled")).filter(has_text=text)
    scheduled.wait_for()
    message_id = str(scheduled.get_attribute("data-message-id"))
    line = scheduled.get_by_test_id("message-schedule")
    assert line.inner_text().startswith("Scheduled for "), line.inner_text()
    assert "quiet hours" not in line.inner_text()
    # The composer is ready for the next message: cleared, the picker closed.
    wait_js(page, "() => document.querySelector('[data-testid=composer-input]').value === ''")
    assert page.get_by_test_id("send-later").is_hidden()
    stored = api.message("alice", message_id)
    assert stored.status == types_pb2.MESSAGE_STATUS_SCHEDULED
    assert stored.schedule_reason == types_pb2.SCHEDULE_REASON_REQUESTED
    assert 8 * 60 <= stored.scheduled_time.seconds - time.time() <= 10 * 60 + 5

    scheduled.get_by_test_id("cancel-message").click()
    canceled = page.locator(sel("message-bubble", message_id=message_id, status="canceled"))
    canceled.wait_for()
    assert canceled.get_by_test_id("message-canceled").is_visible()
    assert canceled.get_by_test_id("cancel-message").count() == 0
    assert api.message("alice", message_id).status == types_pb2.MESSAGE_STATUS_CANCELED
    assert probe(page)["statuses"][message_id] == ["scheduled", "canceled"]

    # Twilio never heard of it: a message sent after it reaches the simulator, the canceled one does not.
    page.get_by_test_id("composer-input").fill("See you soon!")
    page.get_by_test_id("send-button").click()
    bubble(page, "See you soon!").wait_for()
    eventually(lambda: len(sim_messages(stack, to=contact)) == 2, 10, "the next message to reach Twilio")
    assert text not in [m["body"] for m in sim_messages(stack, to=contact)]
    assert not [c for c in sim_creates(stack) if text in str(c)]


# 3. Quiet hours ----------------------------------------------------------------------------------------------
def test_a_message_sent_during_the_contacts_quiet_hours_says_when_it_will_go(
    stack: DevStack, pages: Pages, api: Api
) -> None:
    contact = london_contact()
    page = pages.open_as("alice")
    page.get_by_test_id("new-message-button").click()
    page.get_by_test_id("new-to").fill(contact)
    page.get_by_test_id("new-body").fill("Your parcel is at the depot.")
    page.get_by_test_id("new-send").click()
    first = page.locator(sel("message-bubble", status="scheduled")).filter(has_text="parcel is at the depot")
    first.wait_for()
    line = first.get_by_test_id("message-schedule")
    assert re.match(r"Scheduled for .+ — quiet hours\b", line.inner_text()), line.inner_text()
    assert line.get_attribute("data-reason") == "quiet-hours"

    # From the composer, the notice says so.
    page.get_by_test_id("composer-input").fill("We can redeliver tomorrow.")
    page.get_by_test_id("send-button").click()
    notice = page.get_by_test_id("composer-notice")
    notice.wait_for()
    assert notice.get_attribute("role") == "status"
    assert notice.get_attribute("data-kind") == "quiet-hours"
    assert notice.inner_text().startswith("It is quiet hours for this contact; the message will be sent at "), (
        notice.inner_text()
    )
    second = page.locator(sel("message-bubble", status="scheduled")).filter(has_text="redeliver tomorrow")
    second.wait_for()
    stored = api.message("alice", str(second.get_attribute("data-message-id")))
    assert stored.schedule_reason == types_pb2.SCHEDULE_REASON_QUIET_HOURS
    assert stored.scheduled_time.seconds > time.time()

    # Cancel both (nothing is left to go out later); the notice can be dismissed.
    for b in (first, second):
        message_id = str(b.get_attribute("data-message-id"))
        b.get_by_test_id("cancel-message").click()
        page.locator(sel("message-bubble", message_id=message_id, status="canceled")).wait_for()
    page.get_by_test_id("composer-notice-dismiss").click()
    wait_js(page, "() => document.querySelector('[data-testid=composer-notice]').textContent === ''")
    assert not sim_messages(stack, to=contact)


# 4. Retry a failed message -----------------------------------------------------------------------------------
def test_a_failed_message_shows_its_error_in_words_and_retry_delivers_it(
    stack: DevStack, pages: Pages, api: Api
) -> None:
    contact = new_contact()
    patch_rules(stack, {"outcomes": {contact: {"status": "undelivered", "error_code": 30003}}})
    try:
        page = pages.open_as("alice")
        page.get_by_test_id("new-message-button").click()
        page.get_by_test_id("new-to").fill(contact)
        text = "Your prescription is ready to collect."
        page.get_by_test_id("new-body").fill(text)
        page.get_by_test_id("new-send").click()

        failed = page.locator(sel("message-bubble", status="undelivered")).filter(has_text=text)
        failed.wait_for(timeout=20_000)
        failed_id = str(failed.get_attribute("data-message-id"))
        error = failed.get_by_test_id("message-error").inner_text()
        assert "error 30003" in error and "Unreachable handset" in error, error
        retry = failed.get_by_test_id("retry-message")
        assert retry.is_visible()
        conversation_id = api.message("alice", failed_id).conversation_id

        # The number works again; a double click on Retry sends once.
        patch_rules(stack, {"outcomes": {}})
        retry.dblclick()

        again = page.locator(sel("message-bubble", retry_of=failed_id))
        again.wait_for()
        retry_id = str(again.get_attribute("data-message-id"))
        assert retry_id != failed_id
        assert again.get_by_test_id("retry-of").inner_text() == "Retry of an earlier message"
        page.locator(sel("message-bubble", message_id=retry_id, status="delivered")).wait_for(timeout=20_000)

        # The failed one now says it was retried, and points at its retry.
        page.locator(sel("message-bubble", message_id=failed_id, retried_by=retry_id)).wait_for()
        assert failed.get_by_test_id("retry-message").count() == 0
        link = failed.get_by_test_id("retried-link")
        assert link.inner_text() == "Retried"
        link.click()
        page.locator(sel("message-bubble", message_id=retry_id)).and_(page.locator(".flash")).wait_for()

        stored = api.message("alice", failed_id)
        assert stored.status == types_pb2.MESSAGE_STATUS_UNDELIVERED and stored.retried_by == retry_id
        assert api.message("alice", retry_id).retry_of == failed_id
        outbound = [m for m in api.messages("alice", conversation_id) if m.body == text]
        assert len(outbound) == 2, [(m.id, m.status) for m in outbound]
        eventually(lambda: len(sim_messages(stack, to=contact)) == 2, 10, "the retry to reach Twilio")
        time.sleep(0.5)
        assert len(sim_messages(stack, to=contact)) == 2, "the double click sent twice"
    finally:
        patch_rules(stack, {"outcomes": {}})
