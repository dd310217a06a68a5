"""The dashboard in a real headless Chromium against a real ``edgejobs serve``.

Every assertion on the page auto-waits (Playwright's ``expect``), so a test sees the page
change by itself: jobs move because SSE events arrived, never because the test reloaded. A
marker set on ``window`` after sign-in proves that no reload happened.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import LONG_TYPE, Api, Org, Server
from playwright.sync_api import Page, expect
from proxy_kit import prefix_proxy, serving_in_thread

pytestmark = pytest.mark.browser

NewPage = Any
XSS = "<img src=x onerror=alert(1)>"
DOCS_IMG = Path(__file__).resolve().parent.parent.parent / "docs" / "img"


def row(page: Page, job_id: str) -> Any:
    """The job's row in the visible list."""
    return page.get_by_test_id(f"job-row-{job_id}")


def sign_in(page: Page, token: str, hash_route: str = "#/jobs", base: str = "") -> None:
    """Sign in through the form and wait for the live stream; mark the window so a later
    reload would show (the marker would be gone)."""
    page.goto(base + "/" + hash_route)
    expect(page.get_by_test_id("login-form")).to_be_visible()
    page.get_by_test_id("login-token").fill(token)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("live-indicator")).to_have_attribute("data-state", "open")
    expect(page.get_by_test_id("login-form")).to_be_hidden()
    page.evaluate("window.__e2eNoReload = true")


def assert_not_reloaded(page: Page) -> None:
    """The page is the one signed in earlier (no navigation or reload happened since)."""
    assert page.evaluate("window.__e2eNoReload === true"), "the page reloaded"


def hold_first(page: Page, url: re.Pattern[str]) -> list[tuple[Any, Any]]:
    """Hold the first request to ``url`` from now on: its answer is read from the server when
    it is made and handed to the browser only when the test calls
    ``route.fulfill(response=answer)``; later requests pass. The list gets ``(route, answer)``
    (see :func:`first_held`)."""
    held: list[tuple[Any, Any]] = []

    def hold_the_first(route: Any) -> None:
        if held:
            route.continue_()
        else:
            held.append((route, route.fetch()))

    page.route(url, hold_the_first)
    return held


def first_held(page: Page, held: list[tuple[Any, Any]], url: re.Pattern[str]) -> Any:
    """The ``(route, answer)`` :func:`hold_first` holds, once the page has made the request."""
    # Route handlers run while the test is inside a Playwright call: let this one run (and
    # read the answer) before the test changes anything.
    deadline = time.monotonic() + 10
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(10)
    assert held, f"no request to {url.pattern} reached the route"
    return held[0]


def hold_first_answer(page: Page, url: re.Pattern[str], token: str, hash_route: str) -> Any:
    """Sign in at ``hash_route`` and hold the first request to ``url`` (:func:`hold_first`).
    Returns ``(route, answer)``."""
    held = hold_first(page, url)
    with page.expect_request(url):
        sign_in(page, token, hash_route)
    return first_held(page, held, url)


def event_reached(page: Page, server: Server, job_id: str) -> None:
    """Wait until the page's event stream has delivered the newest event of ``job_id``."""
    newest = server.last_event_id(job_id)
    assert newest > 0, f"job {job_id} has no event"
    page.wait_for_function(
        "n => Number(document.getElementById('live').dataset.lastEventId || 0) >= n",
        arg=newest,
        timeout=10_000,
    )


def progress_of(locator: Any) -> float:
    """The numeric ``data-progress`` of a progress bar."""
    return float(locator.get_attribute("data-progress") or 0)


def test_login_live_list_progress_and_logout(new_page: NewPage, org: Org, server: Server) -> None:
    """A job submitted through the API appears, waits queued, runs with an advancing progress
    bar and completes, all on screen without a reload; counts follow; logout ends the session."""
    api = org.api()
    page, _ = new_page()
    list_requests: list[str] = []
    page.on(
        "request",
        lambda r: list_requests.append(r.url) if "/api/v1/jobs?" in r.url else None,
    )
    # The list's first read waits for the event stream, so the counts can show before it is
    # made: wait for that read itself, else it is counted as a fetch made later.
    with page.expect_response(lambda r: "/api/v1/jobs?" in r.url):
        sign_in(page, org.token("operator"))
    expect(page.get_by_test_id("count-completed")).to_have_text("0")
    requests_after_load = len(list_requests)

    # reports.build runs one at a time: the second job visibly waits queued.
    blocker = api.submit("reports.build", {"month": "2026-04"}, priority="high")
    job_id = api.submit("reports.build", {"month": "2026-05"})
    expect(row(page, blocker)).to_have_attribute("data-status", "running")
    expect(row(page, job_id)).to_have_attribute("data-status", "queued")
    expect(page.get_by_test_id("count-queued")).to_have_text("1")
    expect(page.get_by_test_id("count-running")).to_have_text("1")

    for step in range(1, 5):
        server.release(blocker, f"step{step}")
    expect(row(page, blocker)).to_have_attribute("data-status", "completed")
    expect(row(page, job_id)).to_have_attribute("data-status", "running")

    bar = row(page, job_id).get_by_role("progressbar")
    seen = [progress_of(bar)]
    for step, expected in ((1, "25"), (2, "50"), (3, "75")):
        server.release(job_id, f"step{step}")
        expect(bar).to_have_attribute("data-progress", re.compile(rf"^{expected}(\.0+)?$"))
        seen.append(progress_of(bar))
    assert seen == sorted(seen) and len(set(seen)) == len(seen), seen
    server.release(job_id, "step4")
    expect(row(page, job_id)).to_have_attribute("data-status", "completed")
    expect(page.get_by_test_id("count-completed")).to_have_text("2")
    expect(page.get_by_test_id("count-queued")).to_have_text("0")
    expect(page.get_by_test_id("chart-throughput")).to_have_attribute("data-completed", "2")
    assert api.status(job_id) == "completed"
    assert_not_reloaded(page)
    assert len(list_requests) == requests_after_load, "the list was fetched again (polling?)"

    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(page.get_by_test_id("live-indicator")).to_have_attribute("data-state", "closed")
    status = page.evaluate("fetch('/api/v1/whoami').then((r) => r.status)")
    assert status == 401


def test_the_dashboard_works_behind_a_proxy_under_a_prefix(
    new_page: NewPage, org: Org, server: Server
) -> None:
    """Served at /jobs/ by a proxy that strips the prefix (nginx's ``location /jobs/ {
    proxy_pass http://127.0.0.1:8000/; }``): the page loads its files, signs in, reads the API
    and follows the event stream, all under the prefix, and signs out."""
    with serving_in_thread(prefix_proxy(server.url, "/jobs")) as proxy:
        page, _ = new_page()
        outside: list[str] = []
        page.on(
            "request",
            lambda r: None if r.url.startswith(proxy + "/jobs/") else outside.append(r.url),
        )
        sign_in(page, org.token("operator"), base=proxy + "/jobs")
        job_id = org.api().submit("emails.send", {"to": "prefix"})
        expect(row(page, job_id)).to_have_attribute("data-status", "completed")
        page.get_by_test_id("logout").click()
        expect(page.get_by_test_id("login-form")).to_be_visible()
        assert outside == [], "the page asked for something outside its prefix"


def test_a_row_s_progress_message_follows_the_reports(
    new_page: NewPage, org: Org, server: Server
) -> None:
    """A row's progress tooltip kept the message the row was built with while its bar moved
    on; it now says what the latest report said."""
    api = org.api()
    page, _ = new_page()
    sign_in(page, org.token("operator"))
    job_id = api.submit("reports.build", {"month": "2026-07"})
    cell = row(page, job_id).locator(".progress-cell")
    for step in (1, 2):
        server.release(job_id, f"step{step}")
        expect(cell.get_by_role("progressbar")).to_have_attribute("data-progress", str(25 * step))
        expect(cell).to_have_attribute("title", f"section {step} of 4")
    finish_report(server, api, job_id)  # the job type runs one at a time


def test_a_list_answer_older_than_live_events_does_not_hide_their_jobs(
    new_page: NewPage, org: Org
) -> None:
    """On a busy server the list's first page can arrive after live events that are newer
    than it: the jobs those events showed stay on screen (the answer once wiped them)."""
    api = org.api()
    page, _ = new_page()
    list_url = re.compile(r".*/api/v1/jobs\?.*")
    # The page is read now, before the job below exists, and handed to the browser later.
    route, answer = hold_first_answer(page, list_url, org.token("operator"), "#/jobs")
    job_id = api.submit("emails.send", {"to": "ops@example.com"})
    expect(row(page, job_id)).to_have_attribute("data-status", "completed")

    stale = answer.json()
    assert [job["id"] for job in stale["items"]] == []  # read before the job existed
    # A job only that old page holds, so the test can see the page was rendered.
    marker = api.job(job_id) | {"id": "06H2HB00000000000000000000", "status": "failed"}
    stale["items"] = [marker]
    route.fulfill(response=answer, json=stale)
    page.unroute(list_url)
    expect(row(page, marker["id"])).to_have_attribute("data-status", "failed")
    expect(row(page, job_id)).to_have_attribute("data-status", "completed")
    assert_not_reloaded(page)


def test_a_job_that_ends_before_the_stream_listens_is_shown_ended(
    new_page: NewPage, org: Org, server: Server
) -> None:
    """The event stream starts at the present. The page once read its list before the stream
    listened, and a job that ended in between stayed `running` on screen for good (a slow
    proxy in front of the stream is enough). The first reads now wait for the stream."""
    api = org.api()
    job_id = api.submit("exports.archive", {"bucket": "late"})
    api.wait_status(job_id, "running")
    page, _ = new_page()
    held: list[Any] = []
    events_url = re.compile(r".*/api/v1/events.*")
    page.route(events_url, lambda route: route.continue_() if held else held.append(route))
    page.goto("/#/jobs")
    page.get_by_test_id("login-token").fill(org.token("operator"))
    page.get_by_test_id("login-submit").click()
    deadline = time.monotonic() + 10
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(10)
    assert held, "the page opened no event stream"
    page.wait_for_timeout(300)  # a page that does not wait for the stream reads its list now
    server.release(job_id)
    api.wait_status(job_id, "completed")
    held[0].continue_()
    expect(page.get_by_test_id("live-indicator")).to_have_attribute("data-state", "open")
    expect(row(page, job_id)).to_have_attribute("data-status", "completed")
    expect(page.get_by_test_id("count-running")).to_have_text("0")


def test_a_detail_answer_older_than_a_live_event_does_not_hide_the_job_s_end(
    new_page: NewPage, org: Org, server: Server
) -> None:
    """The job ends while the detail view's first answer is on its way: the answer says
    `running`, the live event `completed`; the view must show the newer (it once stayed
    `running` until the next event, which never came)."""
    api = org.api()
    job_id = api.submit("exports.archive", {"bucket": "backups"})
    api.wait_status(job_id, "running")
    page, _ = new_page()
    detail_url = re.compile(rf".*/api/v1/jobs/{job_id}$")
    route, answer = hold_first_answer(page, detail_url, org.token("operator"), f"#/jobs/{job_id}")
    assert answer.json()["status"] == "running"  # read while the job was running

    server.release(job_id)
    api.wait_status(job_id, "completed")
    event_reached(page, server, job_id)  # the `completed` event reaches the page first
    route.fulfill(response=answer)
    expect(page.get_by_test_id("job-status")).to_have_text("completed")
    expect(page.get_by_test_id("job-result")).to_contain_text('"released": true')
    assert_not_reloaded(page)


@pytest.mark.parametrize("view", ["list", "detail"])
def test_a_progress_report_that_comes_while_the_view_loads_is_shown(
    new_page: NewPage, org: Org, server: Server, view: str
) -> None:
    """The view's answer says 25 %; a report of 50 % reaches the page before the answer: the
    view shows 50 % (it once showed 25 % until the next report, minutes away on a long step)."""
    api = org.api()
    job_id = api.submit("reports.build", {"month": "2026-09"})
    server.release(job_id, "step1")
    api.wait_progress(job_id, 25)
    page, _ = new_page()
    if view == "list":
        url, hash_route = re.compile(r".*/api/v1/jobs\?.*"), "#/jobs"
        bar = row(page, job_id).locator(".bar")
    else:
        url, hash_route = re.compile(rf".*/api/v1/jobs/{job_id}$"), f"#/jobs/{job_id}"
        bar = page.get_by_test_id("job-progress")
    route, answer = hold_first_answer(page, url, org.token("operator"), hash_route)
    server.release(job_id, "step2")
    api.wait_progress(job_id, 50)
    event_reached(page, server, job_id)  # the report reaches the page before the answer
    route.fulfill(response=answer)
    expect(bar).to_have_attribute("data-progress", "50")
    assert_not_reloaded(page)
    finish_report(server, api, job_id)  # the job type runs one at a time


def test_the_chart_keeps_endings_that_come_while_its_series_loads(
    new_page: NewPage, org: Org
) -> None:
    """The series answer replaced the chart and dropped the endings counted while it was on
    its way; it now says which event it was read at, and the newer ones are added to it."""
    api = org.api()
    first = api.submit("emails.send", {"to": "a@example.com"})
    api.wait_status(first, "completed")
    page, _ = new_page()
    series_url = re.compile(r".*/api/v1/stats/timeseries$")
    route, answer = hold_first_answer(page, series_url, org.token("operator"), "#/jobs")
    assert sum(minute["completed"] for minute in answer.json()["minutes"]) == 1
    later = [api.submit("emails.send", {"to": f"{n}@example.com"}) for n in range(2)]
    for job_id in later:
        expect(row(page, job_id)).to_have_attribute("data-status", "completed")
    route.fulfill(response=answer)
    expect(page.get_by_test_id("chart-throughput")).to_have_attribute("data-completed", "3")
    assert_not_reloaded(page)


def test_the_chart_counts_a_job_retried_by_hand_once(
    new_page: NewPage, org: Org, server: Server
) -> None:
    """A job fails, is retried by hand and completes: the server counts it once, in the minute
    of its latest ending. The page counted both endings (failed 1, completed 1, while a reload
    showed failed 0); the retry now takes the earlier ending out of the chart."""
    api = org.api()
    page, _ = new_page()
    sign_in(page, org.token("operator"))
    chart = page.get_by_test_id("chart-throughput")
    job_id = api.submit("billing.sync", {"invoice": "INV-5"})
    expect(row(page, job_id)).to_have_attribute("data-status", "failed")
    expect(chart).to_have_attribute("data-failed", "1")

    server.release(job_id, "fixed")
    assert api.client.post(f"/api/v1/jobs/{job_id}/retry").status_code == 200
    expect(row(page, job_id)).to_have_attribute("data-status", "completed")
    expect(chart).to_have_attribute("data-completed", "1")
    expect(chart).to_have_attribute("data-failed", "0")
    minutes = api.client.get("/api/v1/stats/timeseries").json()["minutes"]
    assert sum(m["completed"] for m in minutes) == 1
    assert sum(m["failed"] for m in minutes) == 0
    assert_not_reloaded(page)


def test_detail_progress_eta_cancel_and_retry(new_page: NewPage, org: Org, server: Server) -> None:
    """The detail view shows a running job's live progress and ETA; Cancel and Retry act on
    the job (on screen and in the API); error, traceback and every attempt are shown."""
    api = org.api()
    # One finished build gives the job type a past duration, hence an ETA.
    first = api.submit("reports.build", {"month": "2026-03"})
    for step in range(1, 5):
        server.release(first, f"step{step}")
    api.wait_status(first, "completed")

    page, _ = new_page()
    job_id = api.submit("reports.build", {"month": "2026-06", "format": "pdf"})
    sign_in(page, org.token("operator"), f"#/jobs/{job_id}")
    expect(page.get_by_test_id("job-status")).to_have_text("running")
    expect(page.get_by_test_id("job-params")).to_contain_text('"month": "2026-06"')
    server.release(job_id, "step1")
    bar = page.get_by_test_id("job-progress")
    expect(bar).to_have_attribute("data-progress", "25")
    expect(page.get_by_test_id("job-progress-text")).to_have_text("25% — section 1 of 4")
    expect(page.get_by_test_id("job-eta")).to_have_text(re.compile(r"left$"))
    server.release(job_id, "step2")
    expect(bar).to_have_attribute("data-progress", "50")
    expect(page.get_by_test_id("btn-retry")).to_have_count(0)

    page.get_by_test_id("btn-cancel").click()
    expect(page.get_by_test_id("job-status")).to_have_text("canceled")
    expect(page.get_by_test_id("btn-cancel")).to_have_count(0)
    assert api.status(job_id) == "canceled"
    expect(page.get_by_test_id("attempts-table").locator("tbody tr")).to_have_count(1)

    page.get_by_test_id("btn-retry").click()
    expect(page.get_by_test_id("job-status")).to_have_text(re.compile(r"^(queued|running)$"))
    assert api.status(job_id) in ("queued", "running")
    expect(page.get_by_test_id("job-status")).to_have_text("running")
    for step in range(1, 5):
        server.release(job_id, f"step{step}")
    expect(page.get_by_test_id("job-status")).to_have_text("completed")
    expect(page.get_by_test_id("job-result")).to_contain_text('"sections": 4')
    expect(page.get_by_test_id("attempts-table").locator("tbody tr")).to_have_count(2)

    # A failed job: its error with the traceback and its attempt.
    failed = api.submit("billing.sync", {"invoice": "INV-2026-0042"})
    page.evaluate(f"location.hash = '#/jobs/{failed}'")
    expect(page.get_by_test_id("job-status")).to_have_text("failed")
    error = page.get_by_test_id("job-error")
    expect(error).to_contain_text("ConnectionError: upstream answered 502 Bad Gateway")
    expect(error).to_contain_text("Traceback (most recent call last)")
    expect(page.get_by_test_id("attempts-table")).to_contain_text("ConnectionError")
    expect(page.get_by_test_id("btn-retry")).to_be_visible()
    assert_not_reloaded(page)


def test_a_child_submitted_after_the_parent_opened_is_shown(
    new_page: NewPage, org: Org, server: Server
) -> None:
    """A parent's detail view listed no child submitted after it opened (and, once the parent
    had completed, none until a reload): the child's own event names its parent now."""
    api = org.api()
    running = api.submit("exports.archive", {"bucket": "backups"})
    done = api.submit("emails.send", {"to": "ops@example.com"})
    api.wait_status(running, "running")
    api.wait_status(done, "completed")
    page, _ = new_page()
    sign_in(page, org.token("operator"), f"#/jobs/{running}")
    children = page.get_by_test_id("job-children")
    for parent, status in ((running, "running"), (done, "completed")):
        page.evaluate(f"location.hash = '#/jobs/{parent}'")
        expect(page.get_by_test_id("job-status")).to_have_text(status)
        expect(page.locator("#view-detail h2")).to_have_text(parent)
        expect(children).to_have_text("none")
        child = api.submit("emails.send", {"to": "cfo@example.com"}, depends_on=[parent])
        expect(children.get_by_role("link")).to_have_text([child])
        assert api.job(parent)["dependents"] == [child]
    assert_not_reloaded(page)
    server.release(running)


def test_a_long_error_does_not_widen_the_detail_page(new_page: NewPage, org: Org) -> None:
    """An error message without spaces (a URL with its query) made the attempts table, and so
    the whole detail page, about 2,500 px wide at any window size; it now wraps."""
    api = org.api()
    query = "&".join(f"param{n}=value{n}" for n in range(20))
    endpoint = f"GET https://api.example.com/v1/exports?{query}"
    job_id = api.submit("billing.sync", {"invoice": "INV-77", "endpoint": endpoint})
    api.wait_status(job_id, "failed")
    page, _ = new_page()
    sign_in(page, org.token("operator"), f"#/jobs/{job_id}")
    expect(page.get_by_test_id("attempts-table")).to_contain_text(query)
    for width in (1280, 600):
        page.set_viewport_size({"width": width, "height": 800})
        assert page.evaluate("document.documentElement.scrollWidth") <= width
    # On a phone the error's column kept one character's width: a word per line, a 950 px
    # tall row for a 300-character error. It keeps a readable width now (the table scrolls).
    page.set_viewport_size({"width": 375, "height": 800})
    cell = page.locator(".attempt-error").first
    box = cell.bounding_box()
    assert box is not None and box["width"] >= 150, box


def test_live_updates_keep_the_keyboard_focus(new_page: NewPage, org: Org, server: Server) -> None:
    """Every live update rebuilt the row or the detail view it changed and threw the keyboard
    focus back to the page's start, and every status change closed an opened traceback. The
    focused control (a row's link, an action button, a traceback's summary) keeps the focus
    now, and an opened traceback stays open."""
    api = org.api()
    listed = api.submit("exports.archive", {"bucket": "logs"})
    api.wait_status(listed, "running")
    page, _ = new_page()
    sign_in(page, org.token("operator"))
    link = row(page, listed).get_by_role("link")
    link.focus()
    server.release(listed)
    expect(row(page, listed)).to_have_attribute("data-status", "completed")
    expect(link).to_be_focused()

    # A blocked child's Cancel button while its parent ends and the child starts.
    parent = api.submit("exports.archive", {"bucket": "db"})
    child = api.submit("exports.archive", {"bucket": "db-copy"}, depends_on=[parent])
    page.evaluate(f"location.hash = '#/jobs/{child}'")
    expect(page.get_by_test_id("job-status")).to_have_text("blocked")
    page.get_by_test_id("btn-cancel").focus()
    server.release(parent)
    expect(page.get_by_test_id("job-status")).to_have_text("running")
    expect(page.get_by_test_id("btn-cancel")).to_be_focused()
    server.release(child)

    # A failed job's opened traceback while the job is retried and completes.
    failed = api.submit("billing.sync", {"invoice": "INV-3"})
    api.wait_status(failed, "failed")
    page.evaluate(f"location.hash = '#/jobs/{failed}'")
    attempts = page.get_by_test_id("attempts-table")
    attempts.locator("summary").click()
    expect(attempts.locator("details")).to_have_attribute("open", "")
    expect(attempts.locator("summary")).to_be_focused()
    server.release(failed, "fixed")
    assert api.client.post(f"/api/v1/jobs/{failed}/retry").status_code == 200
    expect(page.get_by_test_id("job-status")).to_have_text("completed")
    expect(attempts.locator("tbody tr")).to_have_count(2)
    expect(attempts.locator("details")).to_have_attribute("open", "")
    expect(attempts.locator("summary")).to_be_focused()
    assert_not_reloaded(page)


def test_viewer_sees_no_actions_and_is_refused(new_page: NewPage, org: Org, server: Server) -> None:
    """A viewer gets no Cancel/Retry/bulk-retry controls, and its own POST with the session
    cookie and a valid CSRF token is refused with 403; state changes need the CSRF header."""
    api = org.api()
    running = api.submit("exports.archive", {"bucket": "backups"})
    failed = api.submit("billing.sync", {"invoice": "INV-7"})
    api.wait_status(failed, "failed")
    api.wait_status(running, "running")

    page, _ = new_page()
    sign_in(page, org.token("viewer"), f"#/jobs/{running}")
    expect(page.get_by_test_id("job-status")).to_have_text("running")
    expect(page.get_by_test_id("btn-cancel")).to_have_count(0)
    page.evaluate(f"location.hash = '#/jobs/{failed}'")
    expect(page.get_by_test_id("job-status")).to_have_text("failed")
    expect(page.get_by_test_id("btn-retry")).to_have_count(0)
    page.evaluate("location.hash = '#/dead'")
    expect(page.get_by_test_id("dead-retry-selected")).to_be_hidden()
    expect(page.get_by_test_id("dead-select-all")).to_be_hidden()

    post = """async ([id, withCsrf]) => {
        const csrf = document.cookie.split('; ').find((c) => c.startsWith('edgejobs_csrf='));
        const headers = withCsrf ? {'X-CSRF-Token': decodeURIComponent(csrf.split('=')[1])} : {};
        const r = await fetch(`/api/v1/jobs/${id}/cancel`, {method: 'POST', headers});
        return [r.status, (await r.json()).error.code];
    }"""
    assert page.evaluate(post, [running, True]) == [403, "forbidden"]
    assert page.evaluate(post, [running, False])[0] == 403
    assert api.status(running) == "running"

    # An operator's session without the CSRF header is refused too.
    operator, _ = new_page()
    sign_in(operator, org.token("operator"))
    assert operator.evaluate(post, [running, False]) == [403, "csrf_failed"]
    assert api.status(running) == "running"
    server.release(running)
    api.wait_status(running, "completed")


def test_params_render_as_text_only(new_page: NewPage, org: Org) -> None:
    """Params holding markup show that markup as text and run no script (no dialog, no
    <img> element, no CSP violation: the page fixture checks the last two for every test)."""
    api = org.api()
    job_id = api.submit("emails.send", {"subject": XSS, "to": "ops@example.com"})
    api.wait_status(job_id, "completed")
    page, watch = new_page()
    sign_in(page, org.token("operator"))
    expect(row(page, job_id)).to_have_attribute("data-status", "completed")
    page.get_by_test_id("search").fill("onerror")
    page.get_by_test_id("search").press("Enter")
    expect(page.locator("#jobs-body tr")).to_have_count(1)
    row(page, job_id).get_by_role("link", name=job_id).click()
    params = page.get_by_test_id("job-params")
    expect(params).to_contain_text(XSS)
    assert params.locator("img").count() == 0
    assert page.locator("img").count() == 0
    assert watch.dialogs == [] and watch.csp_errors == []


def test_a_new_job_matching_the_text_search_appears_live(new_page: NewPage, org: Org) -> None:
    """The page decided by itself whether a new job matched the search, on its own rendering
    of the params: `1.0` is stored as `1.0` but renders as `1`, so a job the server's search
    finds was left out until a reload. The server decides now."""
    api = org.api()
    page, _ = new_page()
    sign_in(page, org.token("operator"), "#/jobs?q=1.0")
    expect(page.locator("#jobs-body tr")).to_have_count(0)
    job_id = api.submit("emails.send", {"ratio": 1.0})
    expect(row(page, job_id)).to_be_visible()
    other = api.submit("emails.send", {"ratio": 2.5})
    api.wait_status(other, "completed")
    expect(row(page, job_id)).to_have_attribute("data-status", "completed")
    expect(row(page, other)).to_have_count(0)
    assert_not_reloaded(page)


def test_a_searched_job_that_ends_while_the_server_is_asked_shows_its_newest_state(
    new_page: NewPage, org: Org, server: Server
) -> None:
    """With a text search, a new job is shown once the server's listing says it matches. The
    job's events that came while that listing was on its way were dropped, so the job stayed
    on screen in the listed, older state (`running` for a job long completed) until a reload."""
    api = org.api()
    page, _ = new_page()
    sign_in(page, org.token("operator"), "#/jobs?q=late-check")
    expect(page.locator("#jobs-body tr")).to_have_count(0)
    search_url = re.compile(r".*/api/v1/jobs\?.*q=late-check.*")
    held = hold_first(page, search_url)  # the page's check of the new job, answered as it runs
    job_id = api.submit("exports.archive", {"bucket": "late-check"})
    api.wait_status(job_id, "running")
    route, answer = first_held(page, held, search_url)
    server.release(job_id)
    api.wait_status(job_id, "completed")
    event_reached(page, server, job_id)  # the job's last event reached the page first
    route.fulfill(response=answer)
    expect(row(page, job_id)).to_have_attribute("data-status", "completed")
    assert_not_reloaded(page)


@pytest.mark.parametrize("query", ["status=running", "status=running&q=nightly"])
def test_a_job_that_stops_matching_the_filter_leaves_the_list(
    new_page: NewPage, org: Org, server: Server, query: str
) -> None:
    """On a list filtered by status, a job that completes once stayed in it with a
    `completed` badge (rows piled up while the running count read 0); it now leaves the list,
    with or without a text search."""
    api = org.api()
    page, _ = new_page()
    sign_in(page, org.token("operator"), f"#/jobs?{query}")
    job_id = api.submit("exports.archive", {"bucket": "nightly"})
    expect(row(page, job_id)).to_have_attribute("data-status", "running")
    expect(page.get_by_test_id("count-running")).to_have_text("1")

    server.release(job_id)
    api.wait_status(job_id, "completed")
    expect(page.get_by_test_id("count-running")).to_have_text("0")
    expect(row(page, job_id)).to_have_count(0)
    expect(page.locator("#jobs-empty")).to_be_visible()
    assert_not_reloaded(page)


def test_search_filters_and_pages(new_page: NewPage, org: Org) -> None:
    """Search by id opens the job, search by text narrows to it, the status, type and
    priority filters narrow the list, and the pager walks through more than one page."""
    api = org.api()
    batch = [
        {"job_type": "images.resize", "params": {"image": f"photo-{n:03}.jpg"}} for n in range(52)
    ]
    response = api.client.post("/api/v1/jobs/batch", json={"jobs": batch})
    assert response.status_code == 201, response.text
    resized = [job["id"] for job in response.json()["jobs"]]
    mail = api.submit("emails.send", {"to": "invoice-4711@example.com"}, priority="critical")
    failed = api.submit("billing.sync", {"invoice": "INV-9"})
    for job_id in (*resized, mail):
        api.wait_status(job_id, "completed")
    api.wait_status(failed, "failed")

    page, _ = new_page()
    sign_in(page, org.token("operator"))
    rows = page.locator("#jobs-body tr")
    expect(rows).to_have_count(50)
    expect(page.get_by_test_id("first-page")).to_be_disabled()
    page.get_by_test_id("next-page").click()
    expect(rows).to_have_count(4)
    expect(page.get_by_test_id("next-page")).to_be_disabled()
    expect(row(page, resized[0])).to_be_visible()
    page.get_by_test_id("first-page").click()
    expect(rows).to_have_count(50)
    expect(row(page, failed)).to_be_visible()

    page.get_by_test_id("filter-status").select_option(["failed"])
    expect(rows).to_have_count(1)
    expect(row(page, failed)).to_have_attribute("data-status", "failed")
    page.get_by_test_id("filter-status").select_option([])
    expect(rows).to_have_count(50)

    page.get_by_test_id("filter-type").select_option("emails.send")
    expect(rows).to_have_count(1)
    expect(row(page, mail)).to_be_visible()
    page.get_by_test_id("filter-type").select_option("")
    page.get_by_test_id("filter-priority").select_option("low")
    expect(rows).to_have_count(50)
    expect(row(page, mail)).to_have_count(0)
    page.get_by_test_id("filter-priority").select_option("critical")
    expect(rows).to_have_count(1)
    page.get_by_test_id("filter-priority").select_option("")

    page.get_by_test_id("search").fill("invoice-4711")
    page.get_by_test_id("search").press("Enter")
    expect(rows).to_have_count(1)
    expect(row(page, mail)).to_be_visible()
    assert "q=invoice-4711" in page.url

    page.get_by_test_id("search").fill(failed)
    page.get_by_test_id("search").press("Enter")
    expect(page).to_have_url(re.compile(rf"#/jobs/{failed}$"))
    expect(page.get_by_test_id("job-status")).to_have_text("failed")
    assert_not_reloaded(page)


def test_a_short_page_with_a_cursor_says_so_and_next_page_goes_on(
    new_page: NewPage, org: Org
) -> None:
    """The server reads a bounded part of a long history per page, so a search that matches
    few jobs may get a short page with a cursor: the list said "No jobs match" under a short
    page (or nothing at all) as if that were the end. It now says the search goes on further
    back, and Next page finds the rest."""
    api = org.api()
    ids = [api.submit("emails.send", {"to": f"short-page-{n}@example.com"}) for n in range(3)]
    for job_id in ids:
        api.wait_status(job_id, "completed")
    page, _ = new_page()
    search_url = re.compile(r".*/api/v1/jobs\?.*q=short-page.*")

    def bounded(route: Any) -> None:
        # The answer a bounded walk gives when it ends after the newest match: the server's
        # own first page of one job, with its real cursor.
        if "cursor=" in route.request.url:
            route.continue_()
        else:
            url = route.request.url.replace("limit=50", "limit=1")
            route.fulfill(response=route.fetch(url=url))

    page.route(search_url, bounded)
    sign_in(page, org.token("viewer"), "#/jobs?q=short-page")
    rows = page.locator("#jobs-body tr")
    expect(rows).to_have_count(1)
    expect(row(page, ids[2])).to_be_visible()
    expect(page.locator("#jobs-empty")).to_have_text(
        "No more matches among the jobs this page searched; Next page looks further back."
    )
    expect(page.get_by_test_id("next-page")).to_be_enabled()
    page.get_by_test_id("next-page").click()
    expect(rows).to_have_count(2)
    expect(row(page, ids[0])).to_be_visible()
    expect(page.locator("#jobs-empty")).to_be_hidden()
    expect(page.get_by_test_id("next-page")).to_be_disabled()
    assert_not_reloaded(page)


def test_a_dead_letter_answer_older_than_live_events_does_not_hide_their_jobs(
    new_page: NewPage, org: Org
) -> None:
    """A job reaches dead_letter while the dead-letter view's first page is on its way: the
    row the live event added must survive the older answer (it once wiped it)."""
    api = org.api()
    page, _ = new_page()
    dead_url = re.compile(r".*/api/v1/jobs\?.*status=dead_letter.*")
    route, answer = hold_first_answer(page, dead_url, org.token("operator"), "#/dead")
    job_id = api.submit("webhooks.deliver", {"url": "https://hooks.example.com/late"})
    api.wait_status(job_id, "dead_letter")
    expect(row(page, job_id)).to_have_attribute("data-status", "dead_letter")  # the live event

    assert answer.json()["items"] == []  # read before the job existed
    route.fulfill(response=answer)
    expect(page.locator("#dead-head th").first).to_be_visible()  # the answer was rendered
    expect(row(page, job_id)).to_have_attribute("data-status", "dead_letter")
    assert_not_reloaded(page)


def test_dead_letter_bulk_retry(new_page: NewPage, org: Org, server: Server) -> None:
    """Jobs reaching dead_letter appear live in the dead-letter view; retrying the selected
    ones requeues exactly those (they then complete), the others stay dead."""
    api = org.api()
    page, _ = new_page()
    sign_in(page, org.token("operator"), "#/dead")
    ids = [
        api.submit("webhooks.deliver", {"url": f"https://hooks.example.com/{n}"}) for n in range(3)
    ]
    for job_id in ids:
        expect(row(page, job_id)).to_have_attribute("data-status", "dead_letter")
    expect(page.get_by_test_id("dead-retry-selected")).to_be_disabled()
    chosen, left = ids[:2], ids[2]
    for job_id in chosen:
        server.release(job_id, "fixed")
        page.get_by_test_id(f"dead-select-{job_id}").check()
    expect(page.get_by_test_id("dead-retry-selected")).to_have_text("Retry selected (2)")
    page.get_by_test_id("dead-retry-selected").click()
    expect(page.get_by_test_id("message")).to_contain_text("Retried 2 jobs")
    for job_id in chosen:
        expect(row(page, job_id)).to_have_attribute("data-status", "completed")
        job = api.job(job_id)
        assert job["status"] == "completed" and job["attempts"] == 3
    assert api.status(left) == "dead_letter"
    expect(row(page, left)).to_have_attribute("data-status", "dead_letter")

    # Select all picks every dead-letter job shown.
    page.get_by_test_id("dead-select-all").check()
    expect(page.get_by_test_id("dead-retry-selected")).to_have_text("Retry selected (1)")
    expect(page.get_by_test_id(f"dead-select-{left}")).to_be_checked()
    assert_not_reloaded(page)


@pytest.mark.parametrize("width", [320, 375])
def test_the_charts_fit_a_phone_s_width(new_page: NewPage, org: Org, width: int) -> None:
    """Each chart was at least 360 px wide, so at 320 to 375 px they ran off the screen; they
    now shrink to the window."""
    page, _ = new_page()
    page.set_viewport_size({"width": width, "height": 800})
    sign_in(page, org.token("viewer"))
    expect(page.get_by_test_id("chart-depth")).to_be_visible()
    figures = page.locator("figure.chart")
    expect(figures).to_have_count(2)
    for figure in figures.all():
        box = figure.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, box
    assert page.evaluate("document.documentElement.scrollWidth") <= width


def test_resume_with_last_event_id_and_reload_on_reset(new_page: NewPage, tmp_path: Path) -> None:
    """When the stream drops, the browser resumes with Last-Event-ID and the missed events
    arrive without reloading any data; with no event id to resume from, or with missed events
    beyond the replay window (the server's ``reset``), the dashboard reloads its data."""
    own = Server(tmp_path).start()
    try:
        tenant = Org("resume", own)
        api = tenant.api()
        ids = [
            api.submit("emails.send", {"to": f"user{n}@example.com"}, delay_s=3600)
            for n in range(4)
        ]
        page, _ = new_page()
        events: list[Any] = []
        lists: list[str] = []

        def on_request(request: Any) -> None:
            if "/api/v1/events" in request.url:
                events.append(request)
            elif "/api/v1/jobs?" in request.url:
                lists.append(request.url)

        page.on("request", on_request)
        sign_in(page, tenant.token("operator"), base=own.url)
        for job_id in ids:
            expect(row(page, job_id)).to_have_attribute("data-status", "scheduled")

        def restart(*cancel: str) -> None:
            own.stop()
            expect(page.get_by_test_id("live-indicator")).to_have_attribute(
                "data-state", "reconnecting"
            )
            for job_id in cancel:
                own.cli("jobs", "cancel", job_id)
            own.start()

        # 1. No event seen yet, so nothing to resume from: the view reloads on reconnect.
        loaded = len(lists)
        restart(ids[0])
        expect(row(page, ids[0])).to_have_attribute("data-status", "canceled", timeout=15000)
        assert len(lists) > loaded, "missed events were neither resumed nor reloaded"

        # 2. With an event id seen, missed events are replayed on the resumed stream.
        fresh = api.submit("emails.send", {"to": "late@example.com"}, delay_s=3600)
        expect(row(page, fresh)).to_have_attribute("data-status", "scheduled")
        loaded, streams = len(lists), len(events)
        restart(ids[1])
        expect(row(page, ids[1])).to_have_attribute("data-status", "canceled", timeout=15000)
        expect(page.get_by_test_id("live-indicator")).to_have_attribute("data-state", "open")
        resumed = [
            r.url
            for r in events[streams:]
            if "last-event-id" in r.all_headers() or "last_event_id=" in r.url
        ]
        assert resumed, "the stream was not resumed from the last event id"
        assert len(lists) == loaded, "the list was reloaded instead of resumed"

        # 3. More missed events than the replay window holds: `reset`, and the data reloads.
        own.extra_config = "\n[events]\nreplay_max_events = 1\n"
        restart(ids[2], ids[3])
        for job_id in ids[2:]:
            expect(row(page, job_id)).to_have_attribute("data-status", "canceled", timeout=15000)
        assert len(lists) > loaded, "the reset did not reload the list"
        assert_not_reloaded(page)
    finally:
        own.stop()


def test_a_session_changed_in_another_tab_is_noticed(new_page: NewPage, tmp_path: Path) -> None:
    """Another tab of the same browser signs out and in with another org's viewer token: the
    session cookie changes under this tab, whose stream the server closes and the browser
    reopens by itself. The tab kept the old org and role in its header, mixed the other
    org's jobs into the old ones and offered Cancel/Retry to a viewer; it now starts over
    as the new session."""
    own = Server(tmp_path)
    own.extra_config = "\n[events]\nkeepalive_s = 1\n"  # a stream checks its session each second
    own.start()
    try:
        first, second = Org("first", own), Org("second", own)
        old_job = first.api().submit("billing.sync", {"invoice": "INV-1"})
        new_job = second.api().submit("billing.sync", {"invoice": "INV-2"})
        page, _ = new_page()
        sign_in(page, first.token("operator"), base=own.url)
        expect(row(page, old_job)).to_have_attribute("data-status", "failed")
        expect(page.locator("#whoami")).to_have_text("first · operator")

        other = page.context.new_page()
        other.goto(own.url + "/#/jobs")
        other.get_by_test_id("logout").click()
        other.get_by_test_id("login-token").fill(second.token("viewer"))
        other.get_by_test_id("login-submit").click()
        expect(other.locator("#whoami")).to_have_text("second · viewer")

        expect(page.locator("#whoami")).to_have_text("second · viewer", timeout=15000)
        expect(row(page, new_job)).to_have_attribute("data-status", "failed")
        expect(row(page, old_job)).to_have_count(0)
        expect(page.locator("body")).not_to_have_class(re.compile(r"\bcan-operate\b"))
        page.evaluate(f"location.hash = '#/jobs/{new_job}'")
        expect(page.get_by_test_id("job-status")).to_have_text("failed")
        expect(page.get_by_test_id("btn-retry")).to_have_count(0)
        assert_not_reloaded(page)
    finally:
        own.stop()


def test_screenshots(new_page: NewPage, server: Server, artifacts: Path) -> None:
    """Screenshots of the job list and of a running job's detail, with realistic data, into
    test-artifacts/ (the README's docs/img/ copies come from here)."""
    acme = Org("acme", server)
    api = acme.api()
    done = api.submit("reports.build", {"month": "2026-09", "format": "pdf"})
    for step in range(1, 5):
        server.release(done, f"step{step}")
    api.wait_status(done, "completed")
    for n, (to, priority) in enumerate(
        [("ana@example.com", "high"), ("ops@example.com", "normal"), ("li@example.com", "low")]
    ):
        api.submit("emails.send", {"to": to, "template": "welcome", "n": n}, priority=priority)
    for name in ("hero.jpg", "team.png", "logo.svg"):
        api.submit("images.resize", {"image": name, "width": 640})
    failed = api.submit("billing.sync", {"invoice": "INV-2026-0042", "amount_eur": 1290})
    dead = api.submit("webhooks.deliver", {"url": "https://hooks.example.com/orders"})
    archive = api.submit("exports.archive", {"bucket": "backups", "prefix": "2026/11/"})
    report = api.submit("reports.build", {"month": "2026-10", "format": "pdf"}, priority="high")
    waiting = api.submit("reports.build", {"month": "2026-11", "format": "csv"})
    api.submit(
        "emails.send",
        {"to": "cfo@example.com", "template": "monthly-report"},
        depends_on=[report],
    )
    api.submit("images.resize", {"image": "banner.webp", "width": 1920}, delay_s=3600)
    api.wait_status(failed, "failed")
    api.wait_status(dead, "dead_letter")
    api.wait_status(archive, "running")
    server.release(report, "step1")
    server.release(report, "step2")

    page, _ = new_page()
    sign_in(page, acme.token("operator"))
    expect(row(page, report).get_by_role("progressbar")).to_have_attribute("data-progress", "50")
    expect(row(page, waiting)).to_have_attribute("data-status", "queued")
    expect(page.get_by_test_id("count-completed")).to_have_text("7")
    page.mouse.move(0, 0)
    page.screenshot(path=str(artifacts / "dashboard-jobs.png"))

    page.evaluate(f"location.hash = '#/jobs/{report}'")
    expect(page.get_by_test_id("job-status")).to_have_text("running")
    expect(page.get_by_test_id("job-eta")).to_have_text(re.compile(r"left$"))
    expect(page.get_by_test_id("job-children").get_by_role("link")).to_have_count(1)
    expect(page.get_by_test_id("attempts-table").locator("tbody tr")).to_have_count(1)
    page.screenshot(path=str(artifacts / "dashboard-detail.png"))

    for step in (3, 4):
        server.release(report, f"step{step}")
    for step in range(1, 5):
        server.release(waiting, f"step{step}")
    server.release(archive)
    api.wait_status(waiting, "completed")
    for name in ("dashboard-jobs.png", "dashboard-detail.png"):
        assert (artifacts / name).stat().st_size > 10_000


def finish_report(server: Server, api: Api, job_id: str) -> None:
    """Let a report build that passed its second step run its last two and complete."""
    for step in (3, 4):
        server.release(job_id, f"step{step}")
    api.wait_status(job_id, "completed")


def _job_view_on(
    own: Server, new_page: NewPage, job_type: str, status: str
) -> tuple[Org, str, Page]:
    """On a server of the test's own: a job of ``job_type`` (an org of its own, default
    params) once it is ``status``, and a page signed in on its view, showing that."""
    tenant = Org("own", own)
    api = tenant.api()
    job_id = api.submit(job_type, {"n": 1})
    api.wait_status(job_id, status)
    page, _ = new_page()
    sign_in(page, tenant.token("operator"), f"#/jobs/{job_id}", base=own.url)
    expect(page.get_by_test_id("job-status")).to_have_text(status)
    return tenant, job_id, page


def test_a_job_view_open_during_a_restore_shows_the_restored_job(
    new_page: NewPage, tmp_path: Path
) -> None:
    """The server sends ``reset`` after a restore and the view reads the job again, but it
    threw the answer away as older than what it showed: the page kept the lost "completed"
    (and its result) over the restored "failed" until the user left the job."""
    own = Server(tmp_path).start()
    try:
        _, job_id, page = _job_view_on(own, new_page, "billing.sync", "failed")
        backup = tmp_path / "backup.db"
        own.cli("backup", str(backup))
        own.release(job_id, "fixed")  # after the backup, the job is fixed and retried
        page.get_by_test_id("btn-retry").click()
        expect(page.get_by_test_id("job-status")).to_have_text("completed")
        own.stop()  # restore as docs/operations.md says: stop, move aside, copy, start
        database = own.root / "e2e.db"
        for suffix in ("", "-wal", "-shm"):
            path = Path(str(database) + suffix)
            if path.exists():
                path.rename(str(path) + ".old")
        backup.replace(database)
        own.start()
        expect(page.get_by_test_id("job-status")).to_have_text("failed", timeout=20_000)
        assert_not_reloaded(page)
    finally:
        own.stop()


def test_an_old_jobs_change_is_not_put_on_top_of_the_first_page(
    new_page: NewPage, org: Org, server: Server
) -> None:
    """Any event of a job the page did not show was taken for a new job: cancelling the
    oldest of 51 put it first on page one (51 rows), and it showed on page two as well."""
    api = org.api()
    old = api.submit("emails.send", {"to": "old@example.com"}, delay_s=3600)
    newer = [
        api.submit("emails.send", {"to": f"n{i}@example.com"}, delay_s=3600) for i in range(50)
    ]
    page, _ = new_page()
    sign_in(page, org.token("operator"))
    expect(row(page, newer[-1])).to_have_attribute("data-status", "scheduled")
    expect(page.locator("#jobs-body tr")).to_have_count(50)
    assert api.client.post(f"/api/v1/jobs/{old}/cancel").status_code == 200
    newest = api.submit("emails.send", {"to": "new@example.com"})  # a new job still shows
    event_reached(page, server, newest)
    expect(row(page, newest)).to_have_count(1)
    expect(row(page, old)).to_have_count(0)
    ids = page.eval_on_selector_all("#jobs-body tr", "rows => rows.map(r => r.dataset.id)")
    assert ids[0] == newest and ids[1:] == list(reversed(newer))


CLOCK_SHIFT = """
import os
import edgejobs.clock as clock
_now_ms = clock.SystemClock.now_ms
def now_ms(self):
    with open(os.environ["E2E_CLOCK_BACK_MS_FILE"]) as f:
        return _now_ms(self) - int(f.read().strip() or 0)
clock.SystemClock.now_ms = now_ms
"""


class ClockSetBackServer(Server):
    """A server whose wall clock the test can set back (an NTP step on a box without a
    battery-backed clock), through a ``sitecustomize`` only its process loads."""

    def _env(self) -> dict[str, str]:
        env = super()._env()
        site = self.root / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(CLOCK_SHIFT)
        env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
        env["E2E_CLOCK_BACK_MS_FILE"] = str(self.root / "clock_back_ms")
        return env


def test_views_follow_a_job_after_the_servers_clock_is_set_back(
    new_page: NewPage, tmp_path: Path
) -> None:
    """The views order a job's states by ``updated_at``; after the wall clock stepped back,
    every change carried an earlier time and was dropped as older: a completed job stayed
    "running", with Cancel offered, in the list and in its view."""
    (tmp_path / "clock_back_ms").write_text("0")
    own = ClockSetBackServer(tmp_path).start()
    try:
        tenant, job_id, detail = _job_view_on(own, new_page, "exports.archive", "running")
        api = tenant.api()
        listing, _ = new_page()
        sign_in(listing, tenant.token("operator"), "#/jobs", base=own.url)
        expect(row(listing, job_id)).to_have_attribute("data-status", "running")
        (tmp_path / "clock_back_ms").write_text("120000")
        own.release(job_id)
        api.wait_status(job_id, "completed")
        expect(detail.get_by_test_id("job-status")).to_have_text("completed")
        expect(row(listing, job_id)).to_have_attribute("data-status", "completed")
    finally:
        own.stop()


def _contrast(foreground: str, background: str) -> float:
    """WCAG contrast ratio of two computed ``rgb(...)`` colours."""

    def luminance(css: str) -> float:
        channels = [int(v) / 255 for v in re.findall(r"\d+", css)[:3]]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_badges_and_buttons_meet_the_contrast_of_small_text(
    new_page: NewPage, org: Org, scheme: str
) -> None:
    """White on the dark scheme's blue buttons was 3.2:1, and the light scheme's queued,
    running and failed badges 4.0-4.2:1: below the 4.5:1 small text needs (WCAG AA)."""
    page, _ = new_page()
    page.emulate_media(color_scheme=scheme)
    page.goto("/#/jobs")
    button = page.get_by_test_id("login-submit")
    expect(button).to_be_visible()
    pairs = [
        button.evaluate("b => [getComputedStyle(b).color, getComputedStyle(b).backgroundColor]")
    ]
    statuses = ["queued", "running", "completed", "failed", "canceled", "scheduled", "dead_letter"]
    pairs += page.evaluate(
        """statuses => statuses.map(status => {
            const badge = document.createElement("span");
            badge.className = "badge";
            badge.dataset.status = status;
            badge.textContent = status;
            document.body.append(badge);
            const style = getComputedStyle(badge);
            return [style.color, style.backgroundColor];
        })""",
        statuses,
    )
    for (foreground, background), what in zip(pairs, ["button", *statuses], strict=True):
        assert _contrast(foreground, background) >= 4.5, (scheme, what, foreground, background)


def test_keyboard_focus_is_never_hidden_under_the_top_bar(new_page: NewPage, org: Org) -> None:
    """Tabbing back up the job list on a phone, the focused links went under the sticky top
    bar (158 px tall there): in the viewport, so not scrolled to, but out of sight."""
    api = org.api()
    for n in range(30):
        api.submit("emails.send", {"to": f"user{n}@example.com"}, delay_s=3600)
    page, _ = new_page()
    page.set_viewport_size({"width": 375, "height": 740})
    sign_in(page, org.token("operator"))
    expect(page.locator("tr[data-status='scheduled']")).to_have_count(30)
    hidden: list[Any] = []
    check = """() => {
        const focused = document.activeElement;
        const bar = document.querySelector(".topbar");
        if (!focused || bar.contains(focused) || focused === document.body) return null;
        const box = focused.getBoundingClientRect();
        return box.bottom <= bar.getBoundingClientRect().bottom + 1 ? focused.textContent : null;
    }"""
    for key in ["Tab"] * 25 + ["Shift+Tab"] * 25:
        page.keyboard.press(key)
        obscured = page.evaluate(check)
        if obscured is not None:
            hidden.append((key, obscured))
    assert hidden == [], hidden


def test_a_long_job_type_name_does_not_widen_the_page(new_page: NewPage, org: Org) -> None:
    """The job type filter was as wide as its longest option and the detail's type did not
    wrap: a 78-character type name made a phone's page ~900 px wide."""
    job_id = org.api().submit(LONG_TYPE, {})
    page, _ = new_page()
    page.set_viewport_size({"width": 375, "height": 740})
    sign_in(page, org.token("viewer"))
    expect(row(page, job_id)).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.goto(f"/#/jobs/{job_id}")
    expect(page.get_by_test_id("job-status")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375


def test_the_cannot_reach_the_server_message_goes_when_the_server_is_back(
    new_page: NewPage, tmp_path: Path
) -> None:
    """After a restart the stream reconnected and the views reloaded, yet the red banner
    still said "Cannot reach the server." until the next message replaced it."""
    own = Server(tmp_path).start()
    try:
        tenant = Org("banner", own)
        job_id = tenant.api().submit("emails.send", {"to": "a@example.com"}, delay_s=3600)
        page, _ = new_page()
        sign_in(page, tenant.token("operator"), base=own.url)
        own.stop()
        expect(page.get_by_test_id("live-indicator")).to_have_attribute(
            "data-state", "reconnecting"
        )
        page.goto(own.url + f"/#/jobs/{job_id}")
        expect(page.get_by_test_id("message")).to_contain_text("Cannot reach the server")
        own.start()
        expect(page.get_by_test_id("live-indicator")).to_have_attribute(
            "data-state", "open", timeout=20000
        )
        expect(page.get_by_test_id("message")).to_be_hidden()
    finally:
        own.stop()
