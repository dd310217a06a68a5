"""Fixtures of the dashboard's end-to-end tests: one real ``edgejobs serve`` subprocess and
one headless Chromium (the distribution's, never a download) per module, a fresh browser
context per page, and an org of its own per test so tests never see each other's jobs.

Without Chromium the tests are skipped with the reason, except under CI (``CI`` set), where a
missing browser is a failure: CI must not pass by running nothing.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from e2e_support import CHROMIUM, CHROMIUM_ARGS, Org, Server  # noqa: E402

ARTIFACTS = HERE.parent.parent / "test-artifacts"
UI_TIMEOUT_MS = 5000


def _require_chromium() -> None:
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return
    reason = f"no Chromium at {CHROMIUM} (run ./scripts/ensure-browser)"
    if os.environ.get("CI"):
        pytest.fail(f"CI needs the browser tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium driven by Playwright's sync API."""
    _require_chromium()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def server(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``edgejobs serve`` (after the browser check, so a skip starts nothing)."""
    served = Server(tmp_path_factory.mktemp("e2e")).start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def org(server: Server, request: pytest.FixtureRequest) -> Iterator[Org]:
    """An org named after the test."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    tenant = Org(name, server)
    yield tenant
    for client in tenant.clients:
        client.close()


@dataclass
class Watch:
    """What a page must never do: open a dialog, throw, or break the CSP."""

    dialogs: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_errors: list[str] = field(default_factory=list)

    def on_console(self, message: Any) -> None:
        """Keep console errors that report a Content-Security-Policy violation."""
        text = message.text
        if message.type == "error" and ("Content Security Policy" in text or "Refused to" in text):
            self.csp_errors.append(text)


@pytest.fixture
def new_page(browser: Any, server: Server) -> Iterator[Callable[[], tuple[Any, Watch]]]:
    """``page, watch = new_page()``: a page in a fresh context (own cookies), 1280x800.

    After the test, every page must have had no dialog, no uncaught error, no CSP violation.
    """
    contexts: list[Any] = []
    watches: list[Watch] = []

    def make() -> tuple[Any, Watch]:
        context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=server.url)
        context.set_default_timeout(UI_TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        watch = Watch()
        watches.append(watch)

        def on_dialog(dialog: Any) -> None:
            watch.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda error: watch.page_errors.append(str(error)))
        page.on("console", watch.on_console)
        return page, watch

    yield make
    for context in contexts:
        context.close()
    for watch in watches:
        assert watch.dialogs == [], "a dialog opened"
        assert watch.page_errors == [], "the page threw"
        assert watch.csp_errors == [], "the Content-Security-Policy was violated"


@pytest.fixture
def artifacts() -> Path:
    """``test-artifacts/`` at the top of the checkout (ignored by git)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
