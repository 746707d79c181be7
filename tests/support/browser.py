"""Headless Chromium (Debian's) driven by Playwright, for the web inbox tests.

Never `playwright install`: the system Chromium is used through `executable_path`. Without Chromium the
browser tests skip, unless SMS_REQUIRE_BROWSER=1 (CI) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
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
# instead of sampling and hoping.
PROBE_SCRIPT = """
(() => {
  const probe = { statuses: {}, states: [], contacts: {}, arrivals: {} };
  window.__probe = probe;
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
