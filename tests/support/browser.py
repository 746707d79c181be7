"""Headless Chromium (Debian's) driven by Playwright, for the web inbox tests.

Never `playwright install`: the system Chromium is used through `executable_path`. Without Chromium the
browser tests skip, unless SMS_REQUIRE_BROWSER=1 (CI) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from typing import Any

import pytest

from tests.support.processes import ROOT

SCREENSHOTS = ROOT / "docs" / "screenshots"

# The machine has no internet: without these Chromium keeps trying to reach Google's services.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str | None:
    """Debian's Chromium (or $SMS_CHROMIUM), if installed."""
    for candidate in (os.environ.get("SMS_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed in the venv"
    if chromium_path() is None:
        return "Chromium is not installed (apt-get install -y chromium)"
    return None


def skip_or_fail_without_browser() -> None:
    """Skips the caller when there is no browser, or fails when SMS_REQUIRE_BROWSER=1 says there must be one."""
    reason = browser_unavailable()
    if reason is None:
        return
    if os.environ.get("SMS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"SMS_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def update_screenshots() -> bool:
    """Screenshots in docs/screenshots are (re)written only on request, so test runs leave the tree clean."""
    return os.environ.get("SMS_UPDATE_SCREENSHOTS") == "1"


def screenshot(page: Any, name: str) -> None:
    """Saves `page` as docs/screenshots/<name>.png when SMS_UPDATE_SCREENSHOTS=1 (viewport only, not full page)."""
    if not update_screenshots():
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), type="png", animations="disabled", caret="hide")
    size = path.stat().st_size
    assert size < 300_000, f"{path} is {size} bytes; keep screenshots under 300 KB"


# In-page probes -----------------------------------------------------------------------------------------
# Installed before the app's script runs: MutationObservers that record what the page ever showed, so a test
# can assert on transient states (a tick's progression, the indicator's flips, a row that must never appear)
# instead of sampling and hoping. Content-Security-Policy violations are recorded too: the UI must run under its
# policy without one.
PROBE_SCRIPT = """
(() => {
  const probe = { statuses: {}, states: [], contacts: {}, arrivals: {}, csp: [] };
  window.__probe = probe;
  document.addEventListener('securitypolicyviolation', (e) => {
    probe.csp.push({ directive: e.effectiveDirective, blocked: e.blockedURI, sample: e.sample });
  });
  const scan = () => {
    for (const b of document.querySelectorAll('[data-testid="message-bubble"]')) {
      const id = b.dataset.messageId, s = b.dataset.status;
      const seen = probe.statuses[id] || (probe.statuses[id] = []);
      if (seen[seen.length - 1] !== s) seen.push(s);
      if (!(id in probe.arrivals)) probe.arrivals[id] = Date.now();
    }
    for (const c of document.querySelectorAll('[data-testid="conversation-item"]')) {
      const key = c.dataset.contact;
      const rec = probe.contacts[key] || (probe.contacts[key] = { first: Date.now(), firstUnread: null, ids: [] });
      if (!rec.ids.includes(c.dataset.conversationId)) rec.ids.push(c.dataset.conversationId);
      if (rec.firstUnread === null && Number(c.dataset.unread) > 0) rec.firstUnread = Date.now();
    }
    const ind = document.querySelector('[data-testid="connection-indicator"]');
    if (ind) {
      const s = ind.dataset.state;
      if (probe.states[probe.states.length - 1]?.state !== s) probe.states.push({ state: s, at: Date.now() });
    }
  };
  new MutationObserver(scan).observe(document, {
    subtree: true, childList: true, attributes: true,
    attributeFilter: ['data-status', 'data-unread', 'data-state', 'data-contact'],
  });
})();
"""


def probe(page: Any) -> dict[str, Any]:
    """What the in-page probe recorded so far."""
    result: dict[str, Any] = page.evaluate("() => window.__probe")
    return result


def csp_violations(page: Any) -> list[dict[str, str]]:
    """The Content-Security-Policy violations the probe saw in `page` (none on a page without the probe)."""
    found: list[dict[str, str]] = page.evaluate("() => window.__probe ? window.__probe.csp : []")
    return found


# Another origin --------------------------------------------------------------------------------------------
@dataclass
class Elsewhere:
    """An HTTP server on another origin (another port): what reached it, and the page it answers with."""

    url: str
    page: str
    requests: list[str] = field(default_factory=list)


@contextmanager
def elsewhere(page: str = "") -> Iterator[Elsewhere]:
    """An HTTP server on a free port of 127.0.0.1 for the with-block: records every request as "METHOD path
    (authorization: …)" and answers each with `page` as HTML, so a test can tell whether anything reached it and
    can serve a foreign site's page."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
    site = Elsewhere(f"http://127.0.0.1:{server.server_port}", page)
    server.site = site  # type: ignore[attr-defined]  # what the handler records into
    thread = threading.Thread(target=server.serve_forever, name="elsewhere", daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _RecordingHandler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        site: Elsewhere = self.server.site  # type: ignore[attr-defined]
        site.requests.append(f"{self.command} {self.path} (authorization: {self.headers.get('authorization')})")
        body = site.page.encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_OPTIONS = do_PUT = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reports what arrived."""


# Bidi: where glyphs land -----------------------------------------------------------------------------------
# The left edges of the characters of the last occurrence of `text` in an element's text (blanks skipped), by one
# Range per character: text in reading order has growing edges, text reordered by a bidi override does not.
CHAR_LEFTS_SCRIPT = r"""
(el, text) => {
  const nodes = [];
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) nodes.push(n);
  const start = nodes.map((n) => n.data).join('').lastIndexOf(text);
  if (start < 0) return null;
  const lefts = [];
  for (let i = start; i < start + text.length; i++) {
    let offset = i, k = 0;
    while (offset >= nodes[k].data.length) offset -= nodes[k++].data.length;
    if (/\s/.test(nodes[k].data[offset])) continue;
    const range = document.createRange();
    range.setStart(nodes[k], offset);
    range.setEnd(nodes[k], offset + 1);
    lefts.push(range.getBoundingClientRect().left);
  }
  return lefts;
}
"""


def char_lefts(locator: Any, text: str) -> list[float]:
    """The left edges of the non-blank characters of the last `text` in `locator`'s element, in text order."""
    lefts: list[float] | None = locator.evaluate(CHAR_LEFTS_SCRIPT, text)
    assert lefts is not None, f"{text!r} is not in {locator}"
    return lefts


def reads_left_to_right(locator: Any, text: str, settle: float = 2.0) -> bool:
    """Whether the last `text` in `locator`'s element is laid out in reading order, left to right, once its layout
    settles: a live update may re-render the element while it is measured, so a misread is measured again for up
    to `settle` seconds."""
    deadline = time.monotonic() + settle
    while True:
        lefts = char_lefts(locator, text)
        if all(a < b for a, b in pairwise(lefts)) or time.monotonic() > deadline:
            return all(a < b for a, b in pairwise(lefts))
        time.sleep(0.1)
