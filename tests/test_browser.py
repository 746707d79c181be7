"""The web inbox in headless Chromium against `sms-gateway dev`: the whole stack as the README starts it.

One stack and one browser for the module; each test opens its own browser contexts (own localStorage) and
uses its own phone numbers. The server-restart test runs last. SMS_UPDATE_SCREENSHOTS=1 rewrites
docs/screenshots/*.png along the way.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from itertools import count
from typing import Any

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
    elsewhere,
    probe,
    reads_left_to_right,
    screenshot,
    skip_or_fail_without_browser,
)
from tests.support.dev_stack import (
    DevStack,
    dev_stack,
    inject_inbound,
    patch_rules,
    sim_creates,
    sim_messages,
)
from tests.support.polling import eventually
from tests.support.processes import pid_alive

# How soon an injected inbound message must show in the list (simulator → bridge → server → Subscribe →
# Envoy → browser). Locally it takes ~0.1 s; the limit leaves room for a busy CI box.
ARRIVAL_LIMIT_MS = 1000
# Outbound ticks' order: a bubble's status may skip states but never go back.
STATUS_RANK = {"accepted": 1, "scheduled": 2, "queued": 3, "sending": 4, "sent": 5, "delivered": 6}
T = 10_000  # ms: Playwright's default wait for anything the stack does at once

_numbers = count(10)


def new_contact() -> str:
    """A fresh contact number (+1 415 555 01xx, a fictional range) for each conversation a test makes."""
    n = next(_numbers)
    assert n < 100
    return f"+141555501{n:02d}"


def national(e164: str) -> str:
    """How the UI shows a +1 415 555 01xx number without a contact name: national format, (415) 555-01xx."""
    assert e164.startswith("+1415555"), e164
    return f"(415) 555-{e164[-4:]}"


def sel(testid: str, **attrs: str) -> str:
    """A CSS selector for a data-testid with data-* attributes, e.g. sel("conversation-item", contact="+1…")."""
    extra = "".join(f'[data-{k.replace("_", "-")}="{v}"]' for k, v in attrs.items())
    return f'[data-testid="{testid}"]{extra}'


# Fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack() -> Iterator[DevStack]:
    skip_or_fail_without_browser()
    with dev_stack() as s:
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

    def send(self, user: str, to: str, body: str, contact_id: str = "") -> types_pb2.Message:
        resp = self.stub.Send(
            sms_pb2.SendRequest(to=to, body=body, contact_id=contact_id, request_id=f"browser-{time.monotonic_ns()}"),
            metadata=self.stack.metadata(user),
            timeout=10,
            wait_for_ready=True,
        )
        return resp.message

    def conversation(self, user: str, conversation_id: str) -> types_pb2.Conversation:
        req = sms_pb2.GetConversationRequest(conversation_id=conversation_id)
        return self.stub.GetConversation(req, metadata=self.stack.metadata(user), timeout=10).conversation

    def message(self, user: str, message_id: str) -> types_pb2.Message:
        req = sms_pb2.GetMessageRequest(message_id=message_id)
        return self.stub.GetMessage(req, metadata=self.stack.metadata(user), timeout=10).message

    def message_ids(self, user: str, conversation_id: str) -> set[str]:
        req = sms_pb2.ListMessagesRequest(conversation_id=conversation_id, page_size=100)
        resp = self.stub.ListMessages(req, metadata=self.stack.metadata(user), timeout=10, wait_for_ready=True)
        return {m.id for m in resp.messages}

    def contacts(self, user: str, assignee: str | None = None) -> set[str]:
        """The contact numbers `user` may list; with `assignee`, only those of conversations assigned to them."""
        req = sms_pb2.ListConversationsRequest(page_size=100)
        resp = self.stub.ListConversations(req, metadata=self.stack.metadata(user), timeout=10)
        return {c.contact_number for c in resp.conversations if assignee is None or c.owner == assignee}

    def conversation_of(self, user: str, contact: str) -> types_pb2.Conversation:
        """The conversation with `contact` that `user` may see (the newest 100 are searched)."""
        req = sms_pb2.ListConversationsRequest(page_size=100)
        resp = self.stub.ListConversations(req, metadata=self.stack.metadata(user), timeout=10)
        (conv,) = [c for c in resp.conversations if c.contact_number == contact]
        return conv

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
        self.loads: dict[int, int] = {}

    def blank(self, viewport: dict[str, int] = DESKTOP, bypass_csp: bool = False) -> Any:
        """A page on the web UI, signed out, with the probe installed and full page loads counted.

        `bypass_csp` switches the page's Content-Security-Policy off, to see what the UI's own code does.
        """
        ctx = self.browser.new_context(viewport=viewport, device_scale_factor=1, bypass_csp=bypass_csp)
        ctx.set_default_timeout(T)
        ctx.add_init_script(PROBE_SCRIPT)
        self.contexts.append(ctx)
        page = ctx.new_page()
        self.loads[id(page)] = 0

        def loaded(_: Any) -> None:
            self.loads[id(page)] += 1

        page.on("load", loaded)
        page.goto(self.stack.web_url + "/")
        return page

    def sign_in(self, page: Any, user: str) -> Any:
        """Pastes the demo user's token and waits until the live stream is connected."""
        page.get_by_test_id("token-input").fill(self.stack.token(user))
        page.get_by_test_id("sign-in").click()
        page.locator(sel("user-id")).filter(has_text=user).wait_for(state="attached")
        page.locator(sel("connection-indicator", state="connected")).wait_for()
        return page

    def open_as(self, user: str, viewport: dict[str, int] = DESKTOP, bypass_csp: bool = False) -> Any:
        return self.sign_in(self.blank(viewport, bypass_csp), user)

    def csp_violations(self) -> list[dict[str, str]]:
        """What broke the Content-Security-Policy in any page still open: the UI must run under it untouched."""
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


def item(page: Any, contact: str) -> Any:
    """The conversation row of `contact`."""
    return page.locator(sel("conversation-item", contact=contact))


def bubble(page: Any, text: str) -> Any:
    return page.locator(sel("message-bubble")).filter(has_text=text)


def wait_js(page: Any, expression: str, arg: Any = None, timeout: int = T) -> Any:
    """Waits until the JS `expression` (a function of `arg`) is truthy in the page; returns its value."""
    return page.wait_for_function(expression, arg=arg, timeout=timeout).json_value()


# 1. Sign in, new message, ticks ---------------------------------------------------------------------------
def test_agent_signs_in_sends_a_new_message_and_sees_it_delivered_live(stack: DevStack, pages: Pages, api: Api) -> None:
    # Slow the simulator's lifecycle down so the bubble is shown before it is delivered.
    patch_rules(stack, {"lifecycle_ms": {"accepted": 100, "queued": 200, "sending": 300, "sent": 800}})
    try:
        page = pages.blank()
        page.get_by_test_id("sign-in-form").wait_for()
        screenshot(page, "sign-in")

        # A token that is not a JWT is refused on the form, before any call.
        page.get_by_test_id("token-input").fill("not-a-token")
        page.get_by_test_id("sign-in").click()
        wait_js(page, "() => document.querySelector('[data-testid=sign-in-error]').textContent.trim() !== ''")
        pages.sign_in(page, "alice")
        assert page.get_by_test_id("user-role").inner_text().lower() == "agent"
        assert page.get_by_test_id("tab-queue").count() == 0  # agents have no queue dashboard

        contact, text = new_contact(), "Hi Dana, your order #1042 ships tomorrow."
        page.get_by_test_id("new-message-button").click()
        page.get_by_test_id("new-message-form").wait_for()
        page.get_by_test_id("new-to").fill(contact)
        page.get_by_test_id("new-body").fill(text)
        screenshot(page, "new-message")
        page.get_by_test_id("new-send").click()

        # The UI opens the new conversation and shows the message at once, not yet delivered.
        thread = page.locator(sel("thread", contact=contact))
        thread.wait_for()
        conv_id = thread.get_attribute("data-conversation-id")
        assert conv_id and page.evaluate("() => location.hash") == f"#/c/{conv_id}"
        mine = bubble(page, text)
        mine.wait_for()
        assert mine.get_attribute("data-direction") == "outbound"
        message_id = mine.get_attribute("data-message-id")
        assert message_id
        item(page, contact).wait_for()
        assert item(page, contact).get_attribute("data-conversation-id") == conv_id
        assert page.get_by_test_id("composer-input").input_value() == ""

        # …and its tick moves to delivered through live events alone.
        page.locator(sel("message-bubble", message_id=message_id, status="delivered")).wait_for(timeout=20_000)
        tick = mine.get_by_test_id("status-tick")
        assert tick.get_attribute("data-status") == "delivered"
        assert tick.get_attribute("title") == "Delivered"
        seen = probe(page)["statuses"][message_id]
        assert seen[-1] == "delivered", seen
        assert len(seen) >= 2 and seen[0] in ("accepted", "queued", "sending", "sent"), seen
        ranks = [STATUS_RANK[s] for s in seen]
        assert ranks == sorted(ranks), f"a tick went backwards: {seen}"
        assert pages.loads[id(page)] == 1, "the page was reloaded"

        stored = api.message("alice", message_id)
        assert stored.conversation_id == conv_id and stored.body == text
        assert stored.status == types_pb2.MESSAGE_STATUS_DELIVERED
    finally:
        patch_rules(stack, {"lifecycle_ms": {}})


# 2. Inbound: live, fast, unread badge ---------------------------------------------------------------------
def arrival_ms(page: Any, contact: str, since_ms: float) -> float:
    """Milliseconds from `since_ms` (epoch) until the probe saw the row of `contact` with an unread count."""
    rec = probe(page)["contacts"][contact]
    return float(rec["firstUnread"]) - since_ms


def test_an_inbound_reply_appears_within_a_second_with_a_badge_that_opening_clears(
    stack: DevStack, pages: Pages, api: Api
) -> None:
    contact = new_contact()
    sent = api.send("alice", contact, "Hi! Can we move your appointment to Thursday?")
    page = pages.open_as("alice")
    row = item(page, contact)
    row.wait_for()
    assert row.get_attribute("data-unread") == "0"
    assert row.get_by_test_id("unread-badge").count() == 0

    reply = "Thursday 3pm works for me"
    injected_at = time.time() * 1000
    inject_inbound(stack, contact, reply)
    page.locator(sel("conversation-item", contact=contact, unread="1")).wait_for(timeout=5000)
    latency = arrival_ms(page, contact, injected_at)
    assert latency <= ARRIVAL_LIMIT_MS, f"the inbound message took {latency:.0f} ms to show"
    assert row.get_by_test_id("unread-badge").inner_text() == "1"
    assert reply in row.get_by_test_id("conversation-preview").inner_text()
    # The newest conversation goes to the top.
    assert page.locator(sel("conversation-item")).first.get_attribute("data-contact") == contact

    # Opening it shows the reply and clears the badge, in the UI and on the server.
    row.click()
    page.locator(sel("thread", conversation_id=sent.conversation_id)).wait_for()
    inbound = bubble(page, reply)
    inbound.wait_for()
    assert inbound.get_attribute("data-direction") == "inbound"
    assert inbound.get_attribute("data-status") == "received"
    page.locator(sel("conversation-item", contact=contact, unread="0")).wait_for()
    assert row.get_by_test_id("unread-badge").count() == 0
    eventually(lambda: api.conversation("alice", sent.conversation_id).unread_count == 0, 5, "unread 0 on the server")

    # Reply from the composer (Enter sends) — the inbox screenshot: a thread with both directions.
    composer = page.get_by_test_id("composer-input")
    composer.fill("Great, see you Thursday at 3pm!")
    composer.press("Enter")
    bubble(page, "see you Thursday").wait_for()
    wait_js(page, "() => document.querySelector('[data-testid=composer-input]').value === ''")
    page.locator(sel("message-bubble", status="delivered")).filter(has_text="see you Thursday").wait_for()
    screenshot(page, "inbox-thread")

    # A reply to the conversation that is open and in view is read at once: no badge.
    inject_inbound(stack, contact, "Thanks!")
    bubble(page, "Thanks!").wait_for()
    eventually(lambda: api.conversation("alice", sent.conversation_id).unread_count == 0, 5, "the open thread read")
    assert row.get_attribute("data-unread") == "0"


def test_a_message_from_a_new_number_starts_an_unassigned_conversation(stack: DevStack, pages: Pages, api: Api) -> None:
    """A stranger's text is nobody's yet: admins see it in All, agents in their Unassigned view, not in Mine."""
    admin = pages.open_as("admin")
    alice = pages.open_as("alice")
    stranger = new_contact()
    assert item(admin, stranger).count() == 0

    injected_at = time.time() * 1000
    inject_inbound(stack, stranger, "Hello, is this the clinic?")
    admin.locator(sel("conversation-item", contact=stranger, unread="1")).wait_for(timeout=5000)
    latency = arrival_ms(admin, stranger, injected_at)
    assert latency <= ARRIVAL_LIMIT_MS, f"the new conversation took {latency:.0f} ms to show"
    row = item(admin, stranger)
    assert row.get_by_test_id("unread-badge").inner_text() == "1"

    row.click()
    bubble(admin, "is this the clinic").wait_for()
    admin.locator(sel("conversation-item", contact=stranger, unread="0")).wait_for()
    assert row.get_by_test_id("unread-badge").count() == 0

    # Alice, connected all along, never saw it in Mine (her later events prove her stream got past it)…
    mine = new_contact()
    api.send("alice", mine, "Your parcel was delivered today.")  # an ordering barrier
    item(alice, mine).wait_for()
    assert stranger not in probe(alice)["contacts"]
    # …but it waits in her Unassigned view, where hers is not.
    alice.get_by_test_id("view-unassigned").click()
    item(alice, stranger).wait_for()
    item(alice, mine).wait_for(state="detached")
    assert api.conversation("admin", row.get_attribute("data-conversation-id") or "").owner == ""


# 3. Isolation ---------------------------------------------------------------------------------------------
def test_agents_never_see_each_others_conversations(stack: DevStack, pages: Pages, api: Api) -> None:
    a1, b1 = new_contact(), new_contact()
    a1_msg = api.send("alice", a1, "Your table for four is booked for 7pm.")
    b1_msg = api.send("bob", b1, "Your car is ready for collection.")
    alice, bob = pages.open_as("alice"), pages.open_as("bob")
    item(alice, a1).wait_for()
    item(bob, b1).wait_for()

    # Live traffic on both sides: new conversations, inbound replies, both users' messages interleaved.
    a2, b2 = new_contact(), new_contact()
    api.send("bob", b2, "Your quote is attached to the email we sent.")
    inject_inbound(stack, b1, "Great, I'll pick it up at 5")
    api.send("alice", a2, "Your refund has been processed.")
    inject_inbound(stack, a1, "Can we make it 7:30?")
    # A last event for each, after all of the other's: a stream in log order has delivered everything before.
    a3, b3 = new_contact(), new_contact()
    api.send("alice", a3, "Your new card is on its way.")
    api.send("bob", b3, "Your tyres are in stock.")
    for page, contacts in ((alice, (a1, a2, a3)), (bob, (b1, b2, b3))):
        for c in contacts:
            item(page, c).wait_for()
    alice.locator(sel("conversation-item", contact=a1, unread="1")).wait_for()
    bob.locator(sel("conversation-item", contact=b1, unread="1")).wait_for()

    alice_saw, bob_saw = set(probe(alice)["contacts"]), set(probe(bob)["contacts"])
    assert not alice_saw & {b1, b2, b3}, f"alice saw bob's conversations: {alice_saw & {b1, b2, b3}}"
    assert not bob_saw & {a1, a2, a3}, f"bob saw alice's conversations: {bob_saw & {a1, a2, a3}}"
    # What each Mine view shows is exactly what the server lists as that user's own.
    assert alice_saw == api.contacts("alice", assignee="alice")
    assert bob_saw == api.contacts("bob", assignee="bob")

    # A link to the other agent's conversation shows nothing of it.
    alice.evaluate("id => { location.hash = '#/c/' + id }", b1_msg.conversation_id)
    alice.locator(sel("thread", conversation_id=b1_msg.conversation_id)).wait_for()
    toast = alice.get_by_test_id("error-toast")
    toast.wait_for()
    assert re.search(r"not.?found|permission", toast.inner_text(), re.I), toast.inner_text()
    assert alice.locator(sel("message-bubble")).count() == 0
    assert b1 not in alice.get_by_test_id("thread").inner_text()
    assert alice.get_by_test_id("composer-input").is_visible()
    assert alice.get_by_test_id("send-button").is_disabled()
    assert a1_msg.conversation_id != b1_msg.conversation_id


# 4. Admin queue dashboard -----------------------------------------------------------------------------------
def stat(page: Any, key: str) -> str:
    return str(page.get_by_test_id(f"stat-{key}").get_attribute("data-value"))


def test_admin_sees_the_queue_dashboard_with_numbers(stack: DevStack, pages: Pages, api: Api) -> None:
    sent = api.send("admin", new_contact(), "Reminder: your appointment is tomorrow at 10am.")
    eventually(lambda: api.message("admin", sent.id).status == types_pb2.MESSAGE_STATUS_DELIVERED, 15, "delivery")
    page = pages.open_as("admin")
    assert page.get_by_test_id("user-role").inner_text().lower() == "admin"
    page.get_by_test_id("tab-queue").click()
    dashboard = page.get_by_test_id("queue-dashboard")
    dashboard.wait_for()
    page.get_by_test_id("stat-worker-health").wait_for()
    assert page.evaluate("() => location.hash") == "#/queue"
    assert page.get_by_test_id("queue-updated").inner_text().startswith("Updated")

    numeric = (
        "queued",
        "in-progress",
        "retrying",
        "failed-last-hour",
        "sent-last-minute",
        "sent-last-hour",
        "queue-length",
    )
    for key in numeric:
        assert re.fullmatch(r"\d[\d,]*", stat(page, key)), (key, stat(page, key))
    assert stat(page, "oldest-queued-age")  # "—" when nothing waits, else an age
    assert stat(page, "worker-health") == "healthy"
    before = int(stat(page, "sent-last-hour").replace(",", ""))
    assert before >= 1  # at least the message sent above
    screenshot(page, "queue-dashboard")

    # Live: a send makes the dashboard refresh on its own.
    api.send("admin", new_contact(), "Your lab results are ready.")
    wait_js(
        page,
        "n => Number(document.querySelector('[data-testid=stat-sent-last-hour]').dataset.value.replace(/,/g, '')) > n",
        before,
        timeout=15_000,
    )
    assert pages.loads[id(page)] == 1

    # Agents get no dashboard, even by URL.
    alice = pages.open_as("alice")
    alice.evaluate("() => { location.hash = '#/queue' }")
    alice.get_by_test_id("conversation-list").wait_for()
    assert alice.get_by_test_id("queue-dashboard").count() == 0


# 5. Phone width -------------------------------------------------------------------------------------------
def test_phone_width_shows_one_pane_with_a_back_button(stack: DevStack, pages: Pages, api: Api) -> None:
    contact = new_contact()
    api.send("alice", contact, "Your prescription is ready for pickup.")
    inject_inbound(stack, contact, "Thanks, I'll come by after work")
    page = pages.open_as("alice", PHONE)
    sidebar, main = page.locator("aside.sidebar"), page.locator("main.main")
    row = item(page, contact)
    row.wait_for()
    assert sidebar.is_visible() and not main.is_visible()
    box = row.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 1

    row.click()
    bubble(page, "come by after work").wait_for()
    assert main.is_visible() and not sidebar.is_visible()
    back = page.locator(f"main {sel('back-button')}")
    assert back.is_visible()
    composer = page.get_by_test_id("composer-input")
    assert composer.is_visible()
    cbox = composer.bounding_box()
    assert cbox and cbox["x"] + cbox["width"] <= PHONE["width"] and cbox["y"] + cbox["height"] <= PHONE["height"]
    screenshot(page, "phone-thread")

    back.click()
    row.wait_for(state="visible")
    assert not main.is_visible()
    assert page.evaluate("() => location.hash") in ("", "#/")
    # The new-message form is a pane of its own too, with its own way back.
    page.get_by_test_id("new-message-button").click()
    page.get_by_test_id("new-message-form").wait_for()
    assert not sidebar.is_visible()
    page.locator(f"main {sel('back-button')}").click()
    row.wait_for(state="visible")


# 6. Hardening: the token stays home, the UI keeps to its policy, user text cannot rearrange the UI -------------
# Ways a link could try to point the UI's API (and so its bearer token) elsewhere; {0} is the other host.
PAGE_URL_OVERRIDES = ("/?api={0}", "/?api={0}#/", "/#/?api={0}", "/?apiUrl={0}&baseUrl={0}&server={0}", "/#api={0}")


def test_nothing_in_the_page_url_sends_the_token_to_another_host(stack: DevStack, pages: Pages) -> None:
    with elsewhere() as other:
        # The policy's connect-src would refuse such a call as well: switched off, to test what the UI chooses.
        page = pages.open_as("alice", bypass_csp=True)
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        for template in PAGE_URL_OVERRIDES:
            url = stack.web_url + template.format(other.url)
            page.goto(url)  # signed in already: the token is in localStorage
            try:
                page.locator(sel("connection-indicator", state="connected")).wait_for()
            finally:
                assert not other.requests, f"{url} made the UI call another host: {other.requests}"
    elsewhere_calls = [u for u in requested if not u.startswith((stack.web_url + "/", "data:"))]
    assert any("/sms.v1.SmsService/" in u for u in requested) and not elsewhere_calls, elsewhere_calls


def test_the_ui_runs_under_a_content_security_policy_and_no_other_site_can_frame_it(
    stack: DevStack, pages: Pages, api: Api
) -> None:
    contact = new_contact()
    api.send("alice", contact, "Your order is on its way.")
    page = pages.blank()
    response = page.goto(stack.web_url + "/")
    assert response is not None and "frame-ancestors 'none'" in response.headers["content-security-policy"]
    pages.sign_in(page, "alice")
    item(page, contact).click()
    bubble(page, "on its way").wait_for()
    page.get_by_test_id("new-message-button").click()
    page.get_by_test_id("new-message-form").wait_for()
    assert csp_violations(page) == []  # the built UI needs nothing the policy refuses

    # The policy is in force: an injected inline script does not run, a call to another host is refused.
    with elsewhere() as other:
        outcome = page.evaluate(
            """(url) => {
                const s = document.createElement('script');
                s.textContent = 'window.__inline_ran = true';
                document.head.append(s);
                return fetch(url).then(() => 'fetched', () => 'refused').then((r) => [r, !!window.__inline_ran]);
            }""",
            other.url + "/collect",
        )
        assert outcome == ["refused", False]
        assert not other.requests
    assert {v["directive"] for v in csp_violations(page)} == {"script-src-elem", "connect-src"}
    page.evaluate("() => { window.__probe.csp.length = 0 }")  # provoked on purpose: not the UI's

    # Another site's page cannot show the signed-in UI in a frame.
    ui = stack.web_url + "/"
    with elsewhere(f'<!doctype html><iframe src="{ui}" width="900" height="600"></iframe>') as foreign:
        framer = page.context.new_page()
        framer.goto(foreign.url + "/")
        framer.wait_for_load_state("load")  # waits for the frame's load too
        (frame,) = [f for f in framer.frames if f is not framer.main_frame]
        shown = frame.evaluate("() => document.querySelector('[data-testid=sign-in-form], [data-testid=user-id]')")
        assert frame.url != ui and shown is None, f"the UI loaded in another site's frame ({frame.url})"


# A stray POP DIRECTIONAL ISOLATE, then RIGHT-TO-LEFT OVERRIDE: the isolate's end that a plain <bdi> or
# `unicode-bidi: isolate` alone would take from the text, then everything after it reversed.
HOSTILE = "\u2069\u202e"
# What each piece of user text must sit in: its own box, its own bidi paragraph, direction from its own text.
ISOLATION_SCRIPT = """
(values) => values.map((value) => {
  const boxes = [...document.querySelectorAll('body *')]
    .filter((el) => el.textContent === value && ![...el.children].some((c) => c.textContent === value));
  return boxes.map((el) => {
    const style = getComputedStyle(el);
    return [el.getAttribute('dir'), style.unicodeBidi, style.display].join(' ');
  });
})
"""
ISOLATED = {"auto isolate block", "auto isolate inline-block", "auto plaintext block", "auto plaintext inline-block"}


def test_bidi_overrides_in_user_text_cannot_reorder_the_ui_around_it(stack: DevStack, pages: Pages, api: Api) -> None:
    contact, contact_id = new_contact(), f"crm{HOSTILE}-7"
    bodies = (f"Your parcel{HOSTILE} ships today", f"Where is{HOSTILE} it now?", f"Tracking{HOSTILE} 8841 sent")
    api.send("alice", contact, bodies[0], contact_id=contact_id)
    inject_inbound(stack, contact, bodies[1])
    api.send("alice", contact, bodies[2])
    page = pages.open_as("alice")
    row = item(page, contact)
    row.get_by_test_id("conversation-preview").filter(has_text="8841").wait_for()
    row.click()
    thread = page.locator(sel("thread", contact=contact))
    for body in bodies:
        bubble(page, body.split(HOSTILE)[0]).wait_for()

    # Every body, preview and id sits alone in an element that isolates it (the number in its national format).
    values = [*bodies, contact_id, national(contact)]
    shapes = dict(zip(values, page.evaluate(ISOLATION_SCRIPT, values), strict=True))
    for value, found in shapes.items():
        assert found and set(found) <= ISOLATED, f"{value!r} is shown in {found or 'no element of its own'}"
    # 3 bubbles, the preview; the contact id in the row and the thread's header; the number in both.
    assert [len(shapes[v]) for v in values] == [1, 1, 2, 2, 2]

    # The UI's own words around user text read left to right, in their places.
    you, preview = row.get_by_test_id("conversation-preview-you"), row.get_by_test_id("conversation-preview")
    assert reads_left_to_right(you, "You:")
    you_box, preview_box = you.bounding_box(), preview.bounding_box()
    assert you_box and preview_box and you_box["x"] + you_box["width"] <= preview_box["x"] + 1
    chip = row.get_by_test_id("conversation-contact-id")
    assert reads_left_to_right(chip, "ID")
    contact_box = row.get_by_test_id("conversation-contact").bounding_box()
    time_box = row.locator("time").bounding_box()
    assert time_box and contact_box and contact_box["x"] + contact_box["width"] <= time_box["x"]
    header = thread.locator(".thread-sub")
    assert reads_left_to_right(header, "via") and reads_left_to_right(header, "ID")

    # An error quoting hostile input (a crafted link's conversation id) keeps its own label readable.
    page.evaluate("id => { location.hash = '#/c/' + encodeURIComponent(id) }", f"nope{HOSTILE} at all")
    toast = page.get_by_test_id("error-toast")
    toast.wait_for()
    label = re.search(r"\([a-z ]+\)$", toast.inner_text())
    assert label, toast.inner_text()
    assert reads_left_to_right(toast, label.group()), f"{label.group()!r} was reordered in {toast.inner_text()!r}"


# 7. The agent's day: assignment, names, labels, search, notes ----------------------------------------------
def count_of(page: Any, view: str) -> int:
    value = page.get_by_test_id(f"view-{view}").get_attribute("data-count")
    return int(value) if value else -1


def assign_from_menu(page: Any, user: str) -> None:
    """Opens the open thread's Assign menu and assigns (hands) the conversation to `user`."""
    page.get_by_test_id("assign-button").click()
    page.get_by_test_id("assign-input").fill(user)
    page.get_by_test_id("assign-submit").click()


def test_assignment_moves_a_conversation_between_inboxes_live_and_a_rename_reaches_the_admin(
    stack: DevStack, pages: Pages, api: Api
) -> None:
    contact = new_contact()
    inject_inbound(stack, contact, "Hi, I need to change my booking")
    admin, alice, bob = pages.open_as("admin"), pages.open_as("alice"), pages.open_as("bob")
    # Alice watches the unassigned queue; bob his own conversations (Mine, an agent's first view).
    alice.get_by_test_id("view-unassigned").click()
    item(alice, contact).wait_for()
    assert bob.get_by_test_id("view-mine").get_attribute("aria-selected") == "true"
    wait_js(bob, "() => document.querySelector('[data-testid=view-mine]').dataset.count !== ''")
    bob_mine_before = count_of(bob, "mine")
    assert item(bob, contact).count() == 0
    assert count_of(alice, "unassigned") >= 1

    # The admin assigns it to bob from the thread's Assign menu…
    item(admin, contact).click()
    admin.locator(sel("thread-assignee", assignee="")).wait_for()
    assign_from_menu(admin, "bob")
    admin.locator(sel("thread-assignee", assignee="bob")).wait_for()
    # …it appears in bob's inbox and leaves alice's unassigned view, live; bob's Mine count follows.
    item(bob, contact).wait_for()
    item(alice, contact).wait_for(state="detached")
    wait_js(
        bob, "n => Number(document.querySelector('[data-testid=view-mine]').dataset.count) === n + 1", bob_mine_before
    )

    # Bob hands it to alice: it leaves his inbox and joins hers.
    alice.get_by_test_id("view-mine").click()
    item(bob, contact).click()
    bob.locator(sel("thread-assignee", assignee="bob")).wait_for()
    assign_from_menu(bob, "alice")
    item(bob, contact).wait_for(state="detached")
    item(alice, contact).wait_for()

    # Alice names the contact in place; the admin's list shows the name live, instead of the number.
    admin_row = item(admin, contact)
    assert admin_row.get_by_test_id("conversation-contact").inner_text() == national(contact)
    item(alice, contact).click()
    alice.locator(sel("thread-assignee", assignee="alice")).wait_for()
    alice.get_by_test_id("edit-name").click()
    alice.get_by_test_id("contact-name-input").fill("Dana Whitfield")
    alice.get_by_test_id("contact-name-input").press("Enter")
    alice.get_by_test_id("thread-contact").filter(has_text="Dana Whitfield").wait_for()
    admin_row.get_by_test_id("conversation-contact").filter(has_text="Dana Whitfield").wait_for()
    admin.get_by_test_id("thread-contact").filter(has_text="Dana Whitfield").wait_for()  # the admin's open thread
    assert admin.get_by_test_id("thread-number").inner_text() == contact

    for page in (admin, alice, bob):
        assert pages.loads[id(page)] == 1, "a page was reloaded"
    conv = api.conversation("admin", admin_row.get_attribute("data-conversation-id") or "")
    assert conv.owner == "alice" and conv.contact_name == "Dana Whitfield"
    moves = [(a.actor, a.from_assignee, a.to_assignee) for a in conv.assignment_history]
    assert moves[-2:] == [("admin", "", "bob"), ("bob", "bob", "alice")], moves


def test_search_finds_a_message_from_an_earlier_page_and_opens_the_thread_at_it(
    stack: DevStack, pages: Pages, api: Api
) -> None:
    contact = new_contact()
    needle = api.send("alice", contact, "Your warranty code is ZEBRA-4471, keep it safe.")
    for i in range(35):  # more than a page (30) after it
        api.send("alice", contact, f"Update {i}: your parcel is on its way.")
    page = pages.open_as("alice")
    item(page, contact).wait_for()

    search = page.get_by_test_id("search-input")
    search.fill("zebra-4471")
    hit = page.locator(sel("search-hit", message_id=needle.id))
    hit.wait_for()
    assert "ZEBRA-4471" in hit.get_by_test_id("search-hit-body").inner_text()
    assert hit.get_by_test_id("search-hit-contact").inner_text() == national(contact)
    hit.click()

    # The thread opens and loads older pages until the hit shows, marked and in view.
    page.locator(sel("thread", conversation_id=needle.conversation_id)).wait_for()
    shown = page.locator(sel("message-bubble", message_id=needle.id, highlighted="true"))
    shown.wait_for()
    assert page.locator(sel("message-bubble")).count() > 30
    wait_js(
        page,
        """id => {
            const b = document.querySelector(`[data-message-id="${id}"]`).getBoundingClientRect();
            const s = document.querySelector('.thread-scroll').getBoundingClientRect();
            return b.top >= s.top && b.bottom <= s.bottom;
        }""",
        needle.id,
    )
    assert page.evaluate("() => location.hash") == f"#/c/{needle.conversation_id}/m/{needle.id}"

    # The same box finds conversations: by the number, typed any way.
    search.fill(f"415 555 {contact[-4:]}")
    page.locator(f"{sel('conversation-list')} {sel('conversation-item', contact=contact)}").wait_for()
    wait_js(page, "() => document.querySelectorAll('[data-testid=conversation-item]').length === 1")
    search.fill("")
    search.press("Enter")
    wait_js(page, "() => document.querySelectorAll('[data-testid=conversation-item]').length > 1")


def test_a_note_is_kept_in_the_thread_and_never_reaches_the_contact(stack: DevStack, pages: Pages, api: Api) -> None:
    contact = new_contact()
    sent = api.send("alice", contact, "Your booking is confirmed for Friday.")
    page = pages.open_as("alice")
    item(page, contact).click()
    bubble(page, "confirmed for Friday").wait_for()

    note = "Customer prefers calls after 5pm"
    page.get_by_test_id("note-toggle").click()
    assert page.get_by_test_id("note-toggle").get_attribute("aria-pressed") == "true"
    composer = page.get_by_test_id("composer-input")
    composer.fill(note)
    composer.press("Enter")
    shown = page.locator(sel("message-bubble", direction="note")).filter(has_text=note)
    shown.wait_for()
    assert shown.get_by_test_id("note-author").inner_text() == "alice"
    assert shown.get_by_test_id("status-tick").count() == 0
    wait_js(page, "() => document.querySelector('[data-testid=composer-input]').value === ''")

    # Stored in the thread as a note…
    stored = [m for m in api.messages("alice", sent.conversation_id) if m.body == note]
    assert [m.direction for m in stored] == [types_pb2.DIRECTION_NOTE]
    # …and never sent: a message sent after it reaches the simulator, the note does not.
    page.get_by_test_id("note-toggle").click()
    composer.fill("See you Friday!")
    composer.press("Enter")
    bubble(page, "See you Friday!").wait_for()
    eventually(lambda: len(sim_messages(stack, to=contact)) == 2, 10, "the message after the note to reach Twilio")
    bodies = [m["body"] for m in sim_messages(stack, to=contact)]
    assert note not in bodies, bodies
    assert not [c for c in sim_creates(stack) if note in str(c)]


def test_numbers_show_in_national_format_and_labels_filter_the_list(stack: DevStack, pages: Pages, api: Api) -> None:
    contact = new_contact()
    sent = api.send("alice", contact, "Your table is ready.")
    london = "+442079460123"  # Ofcom's drama range: a London number, shown as the UK writes it
    inject_inbound(stack, london, "Hello from London")
    alice, admin = pages.open_as("alice"), pages.open_as("admin")

    row = item(alice, contact)
    assert row.get_by_test_id("conversation-contact").inner_text() == national(contact)
    assert row.get_by_test_id("conversation-contact").get_attribute("title") == contact
    assert item(admin, london).get_by_test_id("conversation-contact").inner_text() == "020 7946 0123"
    row.click()
    assert alice.get_by_test_id("thread-contact").inner_text() == national(contact)

    # A label added in the thread shows as a chip there and in the row; the label filter keeps only its rows.
    alice.get_by_test_id("label-add").click()
    alice.get_by_test_id("label-input").fill("vip")
    alice.get_by_test_id("label-input").press("Enter")
    alice.locator(sel("thread-label", label="vip")).wait_for()
    row.locator(sel("conversation-label", label="vip")).wait_for()
    eventually(lambda: list(api.conversation("alice", sent.conversation_id).labels) == ["vip"], 5, "the label stored")
    alice.get_by_test_id("filter-label").fill("vip")
    alice.get_by_test_id("filter-label").press("Enter")
    wait_js(
        alice,
        "c => [...document.querySelectorAll('[data-testid=conversation-item]')].map((e) => e.dataset.contact) == c",
        contact,
    )
    alice.get_by_test_id("filter-label").fill("")
    alice.get_by_test_id("filter-label").press("Enter")

    # Unread: the filter and the page title's count.
    alice.get_by_test_id("back-button").evaluate("el => el.click()")
    alice.get_by_test_id("filter-unread").click()
    inject_inbound(stack, contact, "Running 10 minutes late")
    alice.locator(sel("conversation-item", contact=contact, unread="1")).wait_for()
    wait_js(alice, "() => /^\\(\\d+\\) SMS Inbox$/.test(document.title)")
    assert all(
        int(n) > 0
        for n in alice.eval_on_selector_all(sel("conversation-item"), "els => els.map(e => e.dataset.unread)")
    )


# 8. Server restart (last: it disturbs the stack) ----------------------------------------------------------
def test_the_live_view_survives_a_server_restart_without_losing_messages(
    stack: DevStack, pages: Pages, api: Api
) -> None:
    contact = new_contact()
    sent = api.send("alice", contact, "We're doing maintenance tonight.")
    page = pages.open_as("alice")
    item(page, contact).click()
    bubble(page, "maintenance tonight").wait_for()
    indicator = page.get_by_test_id("connection-indicator")

    old = stack.reload()["pids"]["server"]
    os.kill(old, signal.SIGKILL)
    page.locator(sel("connection-indicator", state="reconnecting")).wait_for(timeout=15_000)

    # A reply arrives while the server is down: the bridge holds it until the restarted server stores it.
    errors: list[BaseException] = []

    def inject_during_outage() -> None:
        try:
            inject_inbound(stack, contact, "sent while the server was down")
        except BaseException as exc:
            errors.append(exc)

    during = threading.Thread(target=inject_during_outage)
    during.start()
    info = stack.wait_for(lambda i: i["pids"].get("server") not in (None, old), timeout=30)
    assert pid_alive(info["pids"]["server"])
    during.join(30)
    assert not during.is_alive() and not errors, errors
    page.locator(sel("connection-indicator", state="connected")).wait_for(timeout=20_000)
    assert "!!! server killed by SIGKILL" in stack.log()

    # …and one just after, and one from the composer.
    inject_inbound(stack, contact, "sent just after the restart")
    composer = page.get_by_test_id("composer-input")
    composer.fill("Back online, thanks for waiting")
    page.get_by_test_id("send-button").click()
    for text in ("sent while the server was down", "sent just after the restart", "Back online"):
        bubble(page, text).wait_for(timeout=15_000)

    states = [s["state"] for s in probe(page)["states"]]
    assert "reconnecting" in states[1:], states  # [0] is the first connect
    assert states[-1] == "connected" and indicator.get_attribute("data-state") == "connected"
    assert pages.loads[id(page)] == 1, "the page was reloaded"

    # Nothing missing, nothing extra: the thread shows exactly what the server has.
    def same_as_server() -> bool:
        shown = set(page.eval_on_selector_all(sel("message-bubble"), "els => els.map(e => e.dataset.messageId)"))
        return shown == api.message_ids("alice", sent.conversation_id)

    eventually(same_as_server, 10, "the thread to match the server's messages")
    assert page.locator(sel("message-bubble")).count() == 4
