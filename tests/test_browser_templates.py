"""Templates in the web inbox, in headless Chromium against `sms-gateway dev`: the templates page and the composer's
`/` picker.

One stack and one browser for the module; each test opens its own browser contexts and uses its own phone numbers
and template names. Fixtures are copied from test_browser.py (a test module imports from tests.support only).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import count
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sms.v1 import sms_pb2, sms_pb2_grpc, types_pb2

from tests.support.browser import (
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    PROBE_SCRIPT,
    chromium_path,
    csp_violations,
    skip_or_fail_without_browser,
)
from tests.support.dev_stack import DevStack, dev_stack

T = 10_000  # ms: Playwright's default wait for anything the stack does at once

_numbers = count(10)


def new_contact() -> str:
    """A fresh contact number (+1 415 555 02xx, a fictional range) for each conversation a test makes."""
    n = next(_numbers)
    assert n < 100
    return f"+141555502{n:02d}"


def sel(testid: str, **attrs: str) -> str:
    """A CSS selector for a data-testid with data-* attributes, e.g. sel("template-item", name="Greeting")."""
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

    def send(self, user: str, to: str, body: str) -> types_pb2.Message:
        resp = self.stub.Send(
            sms_pb2.SendRequest(to=to, body=body, request_id=f"browser-tpl-{time.monotonic_ns()}"),
            metadata=self.stack.metadata(user),
            timeout=10,
            wait_for_ready=True,
        )
        return resp.message

    def name_contact(self, user: str, conversation_id: str, name: str) -> types_pb2.Conversation:
        req = sms_pb2.UpdateConversationRequest(
            conversation=types_pb2.Conversation(id=conversation_id, contact_name=name),
            update_mask=FieldMask(paths=["contact_name"]),
        )
        return self.stub.UpdateConversation(req, metadata=self.stack.metadata(user), timeout=10).conversation

    def messages(self, user: str, conversation_id: str) -> list[types_pb2.Message]:
        req = sms_pb2.ListMessagesRequest(conversation_id=conversation_id, page_size=100)
        return list(self.stub.ListMessages(req, metadata=self.stack.metadata(user), timeout=10).messages)

    def create_template(self, user: str, name: str, body: str, shared: bool = False) -> types_pb2.Template:
        req = sms_pb2.CreateTemplateRequest(template=types_pb2.Template(display_name=name, body=body, shared=shared))
        return self.stub.CreateTemplate(req, metadata=self.stack.metadata(user), timeout=10).template

    def template_names(self, user: str) -> set[str]:
        req = sms_pb2.ListTemplatesRequest(page_size=500)
        resp = self.stub.ListTemplates(req, metadata=self.stack.metadata(user), timeout=10)
        return {t.display_name for t in resp.templates}


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
        """A page on the web UI, signed in as the demo user `user`, its live stream connected."""
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


# Helpers ----------------------------------------------------------------------------------------------
def open_templates(page: Any) -> None:
    """The templates page, through the top bar's tab, with its first page of templates loaded."""
    page.get_by_test_id("tab-templates").click()
    page.get_by_test_id("templates-page").wait_for()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=template-list-status]')?.textContent !== 'Loading…'"
    )


def create_on_page(page: Any, name: str, body: str, shared: bool = False) -> Any:
    """Creates a template with the page's form; returns its row once listed."""
    page.get_by_test_id("template-name").fill(name)
    page.get_by_test_id("template-body").fill(body)
    if shared:
        page.get_by_test_id("template-shared").check()
    page.get_by_test_id("template-save").click()
    row = page.locator(sel("template-item", name=name))
    row.wait_for()
    assert page.get_by_test_id("template-error").inner_text() == ""
    return row


def open_conversation(page: Any, conversation_id: str) -> Any:
    """Opens the thread through the inbox and returns its composer, focused."""
    page.get_by_test_id("tab-inbox").click()
    page.locator(sel("conversation-item", conversation_id=conversation_id)).click()
    page.locator(sel("thread", conversation_id=conversation_id)).wait_for()
    composer = page.get_by_test_id("composer-input")
    composer.click()
    return composer


def picker_names(page: Any, query: str) -> list[str]:
    """Types `/query` into the empty composer and returns the names the picker offers once it answered."""
    composer = page.get_by_test_id("composer-input")
    composer.fill("")
    composer.press_sequentially(f"/{query}")
    # data-state / data-query: the popup shows the answer to this query (not an earlier one, still on screen).
    page.locator(sel("template-picker-popup", state="ready", query=query)).wait_for()
    names: list[str] = page.locator(sel("template-option")).evaluate_all("els => els.map((e) => e.dataset.name)")
    composer.press("Escape")
    composer.fill("")
    return names


# 1. A personal template, made on the page, inserted from the composer ----------------------------------------
def test_an_agent_creates_a_template_and_inserts_it_filled_in_from_the_composer(pages: Pages, api: Api) -> None:
    contact = new_contact()
    sent = api.send("alice", contact, "Your order has shipped.")
    api.name_contact("alice", sent.conversation_id, "Dana Whitfield")

    page = pages.open_as("alice")
    open_templates(page)
    row = create_on_page(page, "Greeting", "Hi {{contact_name}}, this is {{agent}}")
    assert row.get_attribute("data-shared") == "false"
    assert row.get_attribute("data-editable") == "true"
    assert "Greeting" in api.template_names("alice")

    composer = open_conversation(page, sent.conversation_id)
    assert composer.get_attribute("aria-expanded") == "false"
    composer.press_sequentially("/gre")
    option = page.locator(sel("template-option", name="Greeting"))
    option.wait_for()
    assert composer.get_attribute("aria-expanded") == "true"
    listbox = page.get_by_test_id("template-picker")
    assert listbox.get_attribute("role") == "listbox"
    assert composer.get_attribute("aria-controls") == listbox.get_attribute("id")
    page.wait_for_function(
        "() => { const c = document.querySelector('[data-testid=composer-input]');"
        " const id = c.getAttribute('aria-activedescendant');"
        " return !!id && document.getElementById(id)?.getAttribute('aria-selected') === 'true'; }"
    )
    assert option.get_attribute("role") == "option"
    # The popup sits above the text box.
    popup_box = page.get_by_test_id("template-picker-popup").bounding_box()
    composer_box = composer.bounding_box()
    assert popup_box and composer_box and popup_box["y"] + popup_box["height"] <= composer_box["y"] + 1

    # Enter inserts the body with its placeholders filled, and does not send.
    composer.press("Enter")
    expected = "Hi Dana Whitfield, this is alice"
    page.wait_for_function(
        "v => document.querySelector('[data-testid=composer-input]').value === v", arg=expected, timeout=T
    )
    assert composer.get_attribute("aria-expanded") == "false"
    assert page.get_by_test_id("template-picker-popup").is_hidden()
    assert page.get_by_test_id("send-button").is_enabled()  # the composer saw the input event
    time.sleep(0.3)
    assert [m.body for m in api.messages("alice", sent.conversation_id)] == ["Your order has shipped."]

    # With the picker closed, Enter is the composer's again: it sends.
    composer.press("Enter")
    page.locator(sel("message-bubble")).filter(has_text=expected).wait_for()
    page.wait_for_function("() => document.querySelector('[data-testid=composer-input]').value === ''")
    assert expected in [m.body for m in api.messages("alice", sent.conversation_id)]

    # Escape closes the picker and keeps what was typed.
    composer.press_sequentially("/gr")
    option.wait_for()
    composer.press("Escape")
    page.get_by_test_id("template-picker-popup").wait_for(state="hidden")
    assert composer.input_value() == "/gr"
    assert composer.get_attribute("aria-expanded") == "false"


# 2. Who sees which templates --------------------------------------------------------------------------------
def test_personal_templates_stay_with_their_owner_and_shared_ones_reach_everyone(pages: Pages, api: Api) -> None:
    api.create_template("alice", "Alice private note", "Thanks, {{contact_name}}! Alice here.")
    alice_contact, bob_contact = new_contact(), new_contact()
    alice_conv = api.send("alice", alice_contact, "Hello from alice").conversation_id
    bob_conv = api.send("bob", bob_contact, "Hello from bob").conversation_id

    # The admin makes a shared template on the page.
    admin = pages.open_as("admin")
    open_templates(admin)
    shared_row = create_on_page(admin, "Alpha closing", "Have a good day, {{contact_name}}!", shared=True)
    assert shared_row.get_attribute("data-shared") == "true"
    assert shared_row.get_attribute("data-editable") == "true"

    # Bob: the shared one, read-only; nothing of alice's, on the page or in the picker.
    bob = pages.open_as("bob")
    open_templates(bob)
    bob_shared = bob.locator(sel("template-item", name="Alpha closing"))
    bob_shared.wait_for()
    assert bob_shared.get_attribute("data-editable") == "false"
    assert bob_shared.get_by_test_id("template-readonly").count() == 1
    assert bob_shared.get_by_test_id("template-edit").count() == 0
    assert bob_shared.get_by_test_id("template-delete").count() == 0
    assert bob.locator(sel("template-item", name="Alice private note")).count() == 0
    assert bob.get_by_test_id("template-shared").count() == 0  # agents make personal templates only
    open_conversation(bob, bob_conv)
    bob_offers = picker_names(bob, "")
    assert "Alpha closing" in bob_offers and "Alice private note" not in bob_offers
    assert picker_names(bob, "ali") == []
    assert picker_names(bob, "alp") == ["Alpha closing"]

    # Alice: her own and the shared one, on the page and in the picker.
    alice = pages.open_as("alice")
    open_templates(alice)
    alice.locator(sel("template-item", name="Alice private note", editable="true")).wait_for()
    alice.locator(sel("template-item", name="Alpha closing", editable="false")).wait_for()
    open_conversation(alice, alice_conv)
    alice_offers = picker_names(alice, "")
    assert {"Alpha closing", "Alice private note"} <= set(alice_offers)
    assert set(picker_names(alice, "al")) >= {"Alpha closing", "Alice private note"}

    # ArrowDown moves the active option; a click inserts one. No contact name: its placeholder becomes nothing.
    composer = alice.get_by_test_id("composer-input")
    composer.press_sequentially("/al")
    alice.locator(sel("template-picker-popup", state="ready", query="al")).wait_for()
    first = composer.get_attribute("aria-activedescendant")
    composer.press("ArrowDown")
    assert composer.get_attribute("aria-activedescendant") not in (None, first)
    alice.locator(sel("template-option", name="Alpha closing")).click()
    alice.wait_for_function(
        "v => document.querySelector('[data-testid=composer-input]').value === v", arg="Have a good day, !"
    )
    assert composer.evaluate("el => document.activeElement === el")


# 3. The page: errors next to the form, edit, delete, phone width ------------------------------------------------
def test_the_templates_page_shows_server_errors_and_edits_and_deletes_at_phone_width(pages: Pages, api: Api) -> None:
    page = pages.open_as("bob", PHONE)
    open_templates(page)
    create_on_page(page, "Bob hello", "Hello {{ contact_name }}")

    # A taken name: ALREADY_EXISTS, next to the form; the form keeps what was typed.
    page.get_by_test_id("template-name").fill("Bob hello")
    page.get_by_test_id("template-body").fill("Another text")
    page.get_by_test_id("template-save").click()
    error = page.get_by_test_id("template-error")
    page.wait_for_function("() => document.querySelector('[data-testid=template-error]').textContent !== ''")
    assert "already exists" in error.inner_text().lower()
    assert page.get_by_test_id("template-name").input_value() == "Bob hello"

    # An unknown placeholder: INVALID_ARGUMENT.
    page.get_by_test_id("template-name").fill("Bob order")
    page.get_by_test_id("template-body").fill("Your order {{order_number}} shipped")
    page.get_by_test_id("template-save").click()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=template-error]').textContent.includes('invalid argument')"
    )
    assert "{{order_number}}" in error.inner_text()
    assert page.locator(sel("template-item", name="Bob order")).count() == 0

    # Edit: name and text change in place.
    row = page.locator(sel("template-item", name="Bob hello"))
    row.get_by_test_id("template-edit").click()
    assert page.get_by_test_id("template-form").get_attribute("data-mode") == "edit"
    assert page.get_by_test_id("template-name").input_value() == "Bob hello"
    page.get_by_test_id("template-name").fill("Bob welcome")
    page.get_by_test_id("template-body").fill("Welcome, {{contact_name}}!")
    page.get_by_test_id("template-save").click()
    edited = page.locator(sel("template-item", name="Bob welcome"))
    edited.wait_for()
    assert edited.get_by_test_id("template-body-text").inner_text() == "Welcome, {{contact_name}}!"
    assert page.get_by_test_id("template-form").get_attribute("data-mode") == "create"
    assert "Bob welcome" in api.template_names("bob") and "Bob hello" not in api.template_names("bob")

    # Nothing overflows sideways at phone width.
    width = page.evaluate("() => document.querySelector('[data-testid=templates-page]').scrollWidth")
    assert width <= PHONE["width"], f"the templates page is {width}px wide on a {PHONE['width']}px screen"
    assert page.get_by_test_id("back-button").is_visible()

    # Delete asks first, then removes it.
    edited.get_by_test_id("template-delete").click()
    edited.get_by_test_id("template-delete-confirm").click()
    edited.wait_for(state="detached")
    assert "Bob welcome" not in api.template_names("bob")


# 4. Paging ------------------------------------------------------------------------------------------------
def test_the_templates_page_pages_through_next_page_token(pages: Pages, api: Api) -> None:
    # The admin's own (personal) templates: more than a page (50). Names sort after every other test's.
    for i in range(55):
        api.create_template("admin", f"Zz paging {i:02d}", f"Paging text {i}")
    total = len(api.template_names("admin"))
    assert total >= 55

    page = pages.open_as("admin")
    open_templates(page)
    rows = page.locator(sel("template-item"))
    page.wait_for_function("() => document.querySelectorAll('[data-testid=template-item]').length === 50")
    more = page.get_by_test_id("templates-more")
    assert more.is_visible()
    more.click()
    page.wait_for_function("n => document.querySelectorAll('[data-testid=template-item]').length === n", arg=total)
    more.wait_for(state="hidden")
    names = rows.evaluate_all("els => els.map((e) => e.dataset.name)")
    assert len(set(names)) == total  # no row twice
    assert page.locator(sel("template-item", name="Zz paging 54")).count() == 1
