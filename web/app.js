/*
 * edgejobs dashboard: plain JavaScript, no framework, no build step, works offline and under
 * a strict Content-Security-Policy (no inline script/handlers/styles, no eval).
 *
 * Job data is only ever rendered as text (textContent, createElement, setAttribute), never
 * through innerHTML, so params like "<img src=x onerror=...>" show up literally.
 *
 * Structure, top to bottom:
 *    1. Constants and state     the one `state` object
 *    2. DOM helpers             el(), svgEl(), badge(), progress bars
 *    3. Formatting              times, durations, ETA, JSON
 *    4. HTTP                    api(): same-origin cookie, X-CSRF-Token, error bodies, 401 -> login
 *    5. Messages                the `message` area
 *    6. Session                 boot, login, logout, teardown
 *    7. Header                  who-am-I, counts by status (re-fetched at most once a second,
 *                               only when an event arrives), job types, breakdown
 *    8. Router                  #/jobs[?status=..&job_type=..&priority=..&q=..], #/jobs/<id>, #/dead
 *    9. Jobs list view          filters, search, rows, pagination
 *   10. Job detail view         fields, params/result/error, attempts, live progress, actions
 *   11. Dead-letter view        selection and bulk retry
 *   12. Charts                  inline SVG: throughput per minute and queue depth
 *   13. Live updates (SSE)      EventSource, dispatch of `job` / `progress` / `reset`
 *   14. Start
 */
(function () {
  "use strict";

  // ---------------------------------------------------------------- 1. constants and state

  const STATUSES = ["blocked", "scheduled", "queued", "running", "retrying",
    "completed", "failed", "timed_out", "dead_letter", "canceled"];
  const TERMINAL = new Set(["completed", "failed", "timed_out", "dead_letter", "canceled"]);
  const RETRYABLE = new Set(["failed", "timed_out", "dead_letter", "canceled"]);
  const FAILED_FOR_CHART = new Set(["failed", "timed_out", "dead_letter"]);
  const DEPTH_STATUSES = ["queued", "retrying", "scheduled"];
  const PRIORITIES = ["critical", "high", "normal", "low"];
  const PAGE_SIZE = 50;
  const DEAD_PAGE_SIZE = 100;
  const MAX_LIVE_ROWS = 500;
  const SERIES_MINUTES = 60;
  const MINUTE_MS = 60000;
  const STATS_MIN_INTERVAL_MS = 1000;
  // How long the first page load waits for the event stream to listen before it reads.
  const STREAM_WAIT_MS = 2000;
  const CSRF_COOKIE = "edgejobs_csrf";

  const state = {
    started: false,
    csrf: null,
    me: null,                 // {org, role, token_id}
    clockOffsetMs: 0,         // server time minus browser time, from the Date header
    route: { view: "jobs", filters: emptyFilters() },
    // `arrived`: job events received while a page loads, applied again on top of its answer.
    // `served`: how many jobs the server's page held (a page may end short: see updateListChrome).
    list: { seq: 0, cursor: null, nextCursor: null, page: 1, served: 0, rows: new Map(), jobs: new Map(), arrived: null,
      search: { pending: new Map(), busy: false, last: 0 } },   // new jobs a text search must check (id → newest event)
    // `arrived` (here and in `dead`): as in `list`, events received while the view loads.
    // `replace`: the next read of the job replaces what the view shows, whatever its time
    // says (after a `reset`: the database may have been restored to an earlier state).
    detail: { seq: 0, id: null, job: null, arrived: null, attemptsSeq: 0, replace: false },
    dead: { seq: 0, nextCursor: null, rows: new Map(), jobs: new Map(), selected: new Set(), arrived: null },
    series: [],               // [{t: ms, completed, failed, queue_depth}], oldest first
    counted: new Map(),       // job id -> {t, kind, updated_at}: the ending the page added to the chart
    // The series answer includes every event up to `seriesFrom`; events that come while it is
    // on its way wait in `seriesArrived` ([job, event id]) and count only when newer than it.
    seriesSeq: 0,
    seriesFrom: 0,
    seriesArrived: null,
    // `seq`: only the answer to the latest request is applied (an older one may come last).
    stats: { timer: null, last: 0, seq: 0 },
    chartTimer: null,
    events: { source: null, timer: null, retryMs: 1000, reloadOnOpen: false, lastId: "", dropped: false },
    messageTimer: null,
  };

  // ---------------------------------------------------------------- 2. DOM helpers

  const $ = (id) => document.getElementById(id);

  /** Create an element. props: text, class, testid, on:{event: fn}, anything else -> attribute. */
  function el(tag, props, children) {
    const node = document.createElement(tag);
    setProps(node, props);
    appendChildren(node, children);
    return node;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function svgEl(tag, props, children) {
    const node = document.createElementNS(SVG_NS, tag);
    setProps(node, props);
    appendChildren(node, children);
    return node;
  }

  function setProps(node, props) {
    if (!props) return;
    for (const [key, value] of Object.entries(props)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.setAttribute("class", value);
      else if (key === "testid") node.setAttribute("data-testid", value);
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function appendChildren(node, children) {
    if (children === null || children === undefined) return;
    for (const child of Array.isArray(children) ? children : [children]) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
  }

  const enc = encodeURIComponent;
  const jobHref = (id) => "#/jobs/" + enc(id);

  function badge(status, testid) {
    return el("span", { class: "badge", "data-status": status, testid, text: status });
  }

  function clampPct(value) {
    const n = Number(value);
    return Number.isFinite(n) ? Math.min(100, Math.max(0, n)) : 0;
  }

  function progressBar(value, testid) {
    const bar = el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, testid },
      [el("div", { class: "bar-fill" }), el("span", { class: "bar-label" })]);
    setProgressBar(bar, value);
    return bar;
  }

  function setProgressBar(bar, value) {
    const pct = clampPct(value);
    bar.setAttribute("data-progress", String(value === null || value === undefined ? 0 : value));
    bar.setAttribute("aria-valuenow", String(pct));
    bar.querySelector(".bar-fill").style.width = pct + "%";
    bar.querySelector(".bar-label").textContent = fmtPct(pct);
  }

  /** What names a control across a rebuild of its part of the page from fresh data: its
   * data-testid, its data-focus, or where it links to. */
  function focusKey(node) {
    return node.getAttribute("data-testid") || node.getAttribute("data-focus") ||
      (node.tagName === "A" ? node.getAttribute("href") : null);
  }

  /** Live updates rebuild parts of the page; the keyboard focus must not fall back to the
   * page's start each time. `rebuild()` returns the part as it is after (the same element or
   * its replacement), where the control named like the focused one is focused again. */
  function keepingFocus(part, rebuild) {
    const active = document.activeElement;
    const key = active && active !== part && part.contains(active) ? focusKey(active) : null;
    const fresh = rebuild();
    if (!key) return;
    const twin = Array.from(fresh.querySelectorAll("[data-testid], [data-focus], a[href]")).find((n) => focusKey(n) === key);
    if (twin && twin !== document.activeElement) twin.focus({ preventScroll: true });
  }

  function linkList(ids) {
    if (!ids || !ids.length) return el("span", { class: "muted", text: "none" });
    return el("span", { class: "links" }, ids.map((id) => el("a", { class: "mono", href: jobHref(id), text: id })));
  }

  // ---------------------------------------------------------------- 3. formatting

  const pad2 = (n) => String(n).padStart(2, "0");

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const time = `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
    if (d.toDateString() === new Date().toDateString()) return time;
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${time}`;
  }

  function timeCell(iso) {
    return el("td", { class: "nowrap", title: iso || null, text: fmtTime(iso) });
  }

  function fmtHM(ms) {
    const d = new Date(ms);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  }

  function fmtDuration(ms) {
    if (!Number.isFinite(ms) || ms < 0) return "—";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(1)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function fmtEta(etaS) {
    if (etaS === null || etaS === undefined || !Number.isFinite(Number(etaS))) return "";
    const s = Math.max(0, Number(etaS));
    if (s < 1) return "<1 s left";
    if (s < 90) return `~${Math.ceil(s)} s left`;
    if (s < 5400) return `~${Math.round(s / 60)} min left`;
    return `~${(s / 3600).toFixed(1)} h left`;
  }

  const fmtPct = (value) => `${Math.floor(clampPct(value))}%`;

  function fmtJson(value) {
    const text = JSON.stringify(value === undefined ? null : value, null, 2);
    return text === undefined ? "null" : text;
  }

  function fmtError(error) {
    if (!error) return "";
    const head = [error.type, error.message].filter(Boolean).join(": ");
    return error.traceback ? `${head}\n\n${error.traceback}` : head;
  }

  // ---------------------------------------------------------------- 4. HTTP

  class ApiError extends Error {
    constructor(status, code, message, details) {
      super(message);
      this.status = status;
      this.code = code;
      this.details = details;
    }
  }

  function readCookie(name) {
    for (const part of document.cookie.split(";")) {
      const [key, ...rest] = part.trim().split("=");
      if (key === name) return decodeURIComponent(rest.join("="));
    }
    return null;
  }

  const csrfToken = () => readCookie(CSRF_COOKIE) || state.csrf;

  /** The URL of the server's `path` ("/api/v1/jobs"), relative to the dashboard's page: the
   *  page may be served under a path prefix (a reverse proxy's /jobs/, an app's mount point),
   *  which an absolute path would leave out. */
  const serverUrl = (path) => path.replace(/^\/+/, "");

  /** JSON request. Throws ApiError with the server's {"error": {code, message}} body. */
  async function api(method, path, body, options) {
    const headers = { Accept: "application/json" };
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    if (method !== "GET") {
      const token = csrfToken();
      if (token) headers["X-CSRF-Token"] = token;
    }
    let response;
    try {
      response = await fetch(serverUrl(path), init);
    } catch (err) {
      throw new ApiError(0, "network_error", "Cannot reach the server.");
    }
    noteServerClock(response);
    const data = await response.json().catch(() => null);
    if (response.ok) return data;
    const error = (data && data.error) || {};
    let message = error.message || `${response.status} ${response.statusText || "error"}`;
    const retryAfter = response.headers.get("Retry-After");
    if (retryAfter) message += ` (retry after ${retryAfter} s)`;
    const apiError = new ApiError(response.status, error.code || `http_${response.status}`, message, error.details);
    if (response.status === 401 && !(options && options.allow401)) onUnauthorized();
    throw apiError;
  }

  function noteServerClock(response) {
    const serverMs = Date.parse(response.headers.get("Date") || "");
    if (Number.isFinite(serverMs)) state.clockOffsetMs = serverMs - Date.now();
  }

  const serverNow = () => Date.now() + state.clockOffsetMs;

  // ---------------------------------------------------------------- 5. messages

  function showMessage(text, kind, code) {
    const box = $("message");
    clearTimeout(state.messageTimer);
    box.setAttribute("data-kind", kind || "error");
    box.dataset.code = code || "";  // what the stream's reconnect may take back (see below)
    $("message-text").textContent = text;
    box.hidden = false;
    if (kind === "info") state.messageTimer = setTimeout(hideMessage, 6000);
  }

  function showError(err) {
    if (err instanceof ApiError) showMessage(`${err.message} (${err.code})`, "error", err.code);
    else showMessage(String((err && err.message) || err), "error");
  }

  function hideMessage() {
    $("message").hidden = true;
    $("message-text").textContent = "";
  }

  // ---------------------------------------------------------------- 6. session

  async function boot() {
    let stats;
    try {
      stats = await api("GET", "/api/v1/stats", undefined, { allow401: true });
    } catch (err) {
      if (err.status === 401) return showLogin();
      showError(err);
      setTimeout(boot, 5000);   // server still starting; try to boot again
      return;
    }
    state.started = true;
    state.csrf = csrfToken();
    $("login").hidden = true;
    for (const id of ["app", "nav", "counts", "topbar-right"]) $(id).hidden = false;
    applyStats(stats);
    openEvents();
    // Read what the views show only once the stream listens: a change between the reads and
    // the stream's start was lost for good (the stream starts at the present, and nothing is
    // reloaded on a first open), e.g. a job shown running forever. Events that come during the
    // reads are applied on top of them. A stream slow to open makes its open reload instead.
    if (await streamListening(STREAM_WAIT_MS)) scheduleStatsRefresh();   // counts were read before
    else state.events.reloadOnOpen = true;
    await loadWhoami();
    loadJobTypes();
    loadSeries();
    route();
  }

  function showLogin(reason) {
    $("login").hidden = false;
    for (const id of ["app", "nav", "counts", "topbar-right"]) $(id).hidden = true;
    $("login-error").hidden = !reason;
    $("login-error").textContent = reason || "";
    $("login-token").focus();
  }

  async function onLoginSubmit(event) {
    event.preventDefault();
    const input = $("login-token");
    const button = event.currentTarget.querySelector("[data-testid=login-submit]");
    const token = input.value.trim();
    if (!token) return;
    button.disabled = true;
    try {
      const data = await api("POST", "/login", { token }, { allow401: true });
      state.csrf = (data && data.csrf_token) || readCookie(CSRF_COOKIE);
      input.value = "";
      hideMessage();
      await boot();
    } catch (err) {
      const text = err.status === 401 ? "Invalid or revoked token." : `${err.message} (${err.code})`;
      $("login-error").textContent = text;
      $("login-error").hidden = false;
      showError(err);
    } finally {
      button.disabled = false;
    }
  }

  async function logout() {
    try {
      await api("POST", "/logout", undefined, { allow401: true });
    } catch (err) {
      if (err.status !== 401) showError(err);
    }
    teardown();
    showLogin();
  }

  function onUnauthorized() {
    if (!state.started) return;
    teardown();
    showLogin("Your session has ended. Sign in again.");
  }

  /** Forget everything the signed-in user could see. */
  function teardown() {
    state.started = false;
    state.me = null;
    state.csrf = null;
    closeEvents();
    state.events.lastId = "";
    state.events.reloadOnOpen = false;
    setLive("closed");
    clearTimeout(state.stats.timer);
    state.stats.timer = null;
    clearListView();
    clearDeadView();
    clearDetailView();
    state.series = [];
    state.counted.clear();
    state.seriesSeq++;
    state.seriesFrom = 0;
    state.seriesArrived = null;
    drawCharts();
    renderCounts({});
    $("whoami").textContent = "";
    $("breakdown-body").replaceChildren();
    document.body.classList.remove("can-operate");
  }

  /** The stream dropped and came back: the session cookie may now be another one (another
   * tab signed out and in with another token, which closes this stream), and the page must
   * not go on showing the old org and role with the new session's events. */
  async function checkIdentity() {
    let me;
    try {
      me = await api("GET", "/api/v1/whoami");   // a 401 here shows the login form
    } catch (err) {
      return;
    }
    if (state.started && identityChanged(me)) restartSession(me);
  }

  const identityChanged = (me) => Boolean(state.me && me &&
    (me.token_id !== state.me.token_id || me.org !== state.me.org || me.role !== state.me.role));

  /** Drop everything the old session showed and start over as the new one. */
  async function restartSession(me) {
    teardown();
    await boot();
    if (state.started) showMessage(`Signed in elsewhere as ${whoText(me)}: this page now shows that session.`, "info");
  }

  // ---------------------------------------------------------------- 7. header

  const canOperate = () => Boolean(state.me && (state.me.role === "operator" || state.me.role === "admin"));
  const isSystem = () => Boolean(state.me && state.me.org === "*");

  const whoText = (me) => `${me.org === "*" ? "all orgs" : me.org} · ${me.role}`;

  async function loadWhoami() {
    try {
      state.me = await api("GET", "/api/v1/whoami");
    } catch (err) {
      state.me = { org: "?", role: "viewer", token_id: null };   // unknown: show no actions
      if (err.status !== 401) showError(err);
    }
    $("whoami").textContent = whoText(state.me);
    document.body.classList.toggle("can-operate", canOperate());
  }

  function buildCounts() {
    const box = $("counts");
    for (const status of STATUSES) {
      box.append(el("a", { class: "count", "data-status": status, href: `#/jobs?status=${status}`, title: `Show ${status} jobs` }, [
        el("span", { class: "count-label", text: status.replace("_", " ") }),
        el("span", { class: "count-num", testid: `count-${status}`, text: "0" }),
      ]));
    }
  }

  function renderCounts(byStatus) {
    for (const status of STATUSES) {
      const node = document.querySelector(`[data-testid="count-${status}"]`);
      const value = Number(byStatus[status] || 0);
      node.textContent = String(value);
      node.parentElement.classList.toggle("zero", value === 0);
    }
  }

  function applyStats(stats) {
    const byStatus = (stats && stats.by_status) || {};
    renderCounts(byStatus);
    renderBreakdown(stats || {});
    const depth = DEPTH_STATUSES.reduce((sum, s) => sum + Number(byStatus[s] || 0), 0);
    const minute = ensureMinute(serverNow());
    if (minute) {
      minute.queue_depth = depth;
      scheduleChartDraw();
    }
  }

  /** Counts are re-fetched only when an event arrives, and at most once per second. */
  function scheduleStatsRefresh() {
    if (state.stats.timer || !state.started) return;
    const wait = Math.max(0, state.stats.last + STATS_MIN_INTERVAL_MS - Date.now());
    state.stats.timer = setTimeout(refreshStats, wait);
  }

  async function refreshStats() {
    state.stats.timer = null;
    state.stats.last = Date.now();
    const seq = ++state.stats.seq;
    try {
      const stats = await api("GET", "/api/v1/stats");
      if (seq === state.stats.seq) applyStats(stats);
    } catch (err) {
      if (err.status !== 401) console.warn("stats", err);
    }
  }

  function renderBreakdown(stats) {
    const body = $("breakdown-body");
    body.replaceChildren(breakdownTable("Job type", stats.by_type || {}));
    if (stats.by_org) body.append(breakdownTable("Org", stats.by_org));
  }

  function breakdownTable(title, groups) {
    const head = el("tr", null, [el("th", { text: title }), ...STATUSES.map((s) => el("th", { class: "num", text: s }))]);
    const rows = Object.keys(groups).sort().map((name) => el("tr", null, [
      el("td", { class: "mono", text: name }),
      ...STATUSES.map((s) => el("td", { class: "num", text: String((groups[name] || {})[s] || 0) })),
    ]));
    return el("table", { class: "breakdown-table" }, [el("thead", null, head), el("tbody", null, rows)]);
  }

  async function loadJobTypes() {
    let items = [];
    try {
      items = (await api("GET", "/api/v1/job-types")).items || [];
    } catch (err) {
      if (err.status !== 401) console.warn("job types", err);
    }
    const select = $("filter-type");
    const current = state.route.filters ? state.route.filters.job_type : select.value;
    select.replaceChildren(el("option", { value: "", text: "all types" }));
    for (const type of items) {
      select.append(el("option", { value: type.name, text: type.paused ? `${type.name} (paused)` : type.name }));
    }
    setSelectValue(select, current || "");
  }

  // ---------------------------------------------------------------- 8. router

  function emptyFilters() {
    return { status: [], job_type: "", priority: "", q: "" };
  }

  function parseHash() {
    const raw = location.hash.replace(/^#/, "") || "/jobs";
    const cut = raw.indexOf("?");
    const path = cut < 0 ? raw : raw.slice(0, cut);
    const query = new URLSearchParams(cut < 0 ? "" : raw.slice(cut + 1));
    const parts = path.split("/").filter(Boolean);
    if (parts[0] === "jobs" && parts.length > 1) {
      let id = parts.slice(1).join("/");
      try { id = decodeURIComponent(id); } catch (err) { /* keep it raw */ }
      return { view: "detail", id };
    }
    if (parts[0] === "dead") return { view: "dead" };
    return {
      view: "jobs",
      filters: {
        status: query.getAll("status").filter((s) => STATUSES.includes(s)),
        job_type: query.get("job_type") || "",
        priority: PRIORITIES.includes(query.get("priority")) ? query.get("priority") : "",
        q: query.get("q") || "",
      },
    };
  }

  function route(event) {
    if (!state.started) return;
    if (event && event.type === "hashchange") hideMessage();   // a message belongs to the page it was shown on
    const next = parseHash();
    const previous = state.route;
    state.route = next;
    for (const view of ["jobs", "detail", "dead"]) $(`view-${view}`).hidden = view !== next.view;
    for (const link of document.querySelectorAll("[data-nav]")) {
      link.classList.toggle("active", link.getAttribute("data-nav") === (next.view === "dead" ? "dead" : "jobs"));
    }
    // Only the visible view keeps rows, so every data-testid stays unique on the page.
    if (next.view !== "jobs") clearListView();
    if (next.view !== "dead") clearDeadView();
    if (next.view !== "detail" || (previous && previous.id !== next.id)) clearDetailView();
    if (next.view === "jobs") {
      writeFilterControls(next.filters);
      loadJobs(null);
    } else if (next.view === "dead") {
      loadDead(null);
    } else {
      loadDetail(next.id);
    }
  }

  /** A `reset` event or a fresh stream: reload everything the current view shows. */
  function reloadAll() {
    if (!state.started) return;
    state.detail.replace = true;
    scheduleStatsRefresh();
    loadJobTypes();
    loadSeries();
    route();
  }

  // ---------------------------------------------------------------- 9. jobs list view

  function filtersToQuery(filters) {
    const query = new URLSearchParams();
    for (const status of filters.status) query.append("status", status);
    if (filters.job_type) query.set("job_type", filters.job_type);
    if (filters.priority) query.set("priority", filters.priority);
    if (filters.q) query.set("q", filters.q);
    return query;
  }

  function readFilterControls() {
    return {
      status: Array.from($("filter-status").selectedOptions, (o) => o.value),
      job_type: $("filter-type").value,
      priority: $("filter-priority").value,
      q: $("search").value.trim(),
    };
  }

  function writeFilterControls(filters) {
    for (const option of $("filter-status").options) option.selected = filters.status.includes(option.value);
    setSelectValue($("filter-type"), filters.job_type);
    setSelectValue($("filter-priority"), filters.priority);
    if (document.activeElement !== $("search")) $("search").value = filters.q;
  }

  function setSelectValue(select, value) {
    if (value && !Array.from(select.options).some((o) => o.value === value)) {
      select.append(el("option", { value, text: value }));
    }
    select.value = value;
  }

  function applyFilterControls() {
    const query = filtersToQuery(readFilterControls()).toString();
    const hash = "#/jobs" + (query ? "?" + query : "");
    if (location.hash !== hash) location.hash = hash;   // hashchange -> route()
    else route();
  }

  const looksLikeJobId = (text) => /^[A-Za-z0-9][A-Za-z0-9_-]{7,63}$/.test(text) && /\d/.test(text);

  /** Text that looks like a job id opens that job; anything else (or an unknown id) is `q=`. */
  async function onSearchSubmit(event) {
    event.preventDefault();
    const text = $("search").value.trim();
    if (text && looksLikeJobId(text)) {
      try {
        const job = await api("GET", "/api/v1/jobs/" + enc(text));
        $("search").value = "";
        location.hash = jobHref(job.id);
        return;
      } catch (err) {
        if (err.status !== 404 && err.status !== 400 && err.status !== 422) return showError(err);
      }
    }
    applyFilterControls();
  }

  function clearFilters() {
    $("search").value = "";
    if (location.hash !== "#/jobs") location.hash = "#/jobs";
    else route();
  }

  async function loadJobs(cursor) {
    const list = state.list;
    const seq = ++list.seq;
    const query = filtersToQuery(state.route.filters);
    query.set("limit", String(PAGE_SIZE));
    if (cursor) query.set("cursor", cursor);
    // The answer is a snapshot from when the server read it: live events that arrive before
    // it (a busy server, a slow network) are newer, and must not be wiped by it.
    const arrived = [];
    list.arrived = arrived;
    try {
      const data = await api("GET", "/api/v1/jobs?" + query.toString());
      if (seq !== list.seq || state.route.view !== "jobs") return;
      list.arrived = null;
      list.page = cursor ? list.page + 1 : 1;
      list.cursor = cursor;
      list.nextCursor = (data && data.next_cursor) || null;
      list.served = ((data && data.items) || []).length;
      renderJobRows((data && data.items) || []);
      for (const item of arrived) replayArrived(item, listOnJob, (event) => rowOnProgress(list.rows, list.jobs, event));
    } catch (err) {
      if (seq === list.seq) {
        list.arrived = null;
        showError(err);
      }
    }
  }

  const JOB_COLUMNS = ["id", "type", "status", "priority", "progress", "attempts", "created", "updated"];

  function renderHead(theadId, withCheckbox) {
    const cells = (isSystem() ? ["org"] : []).concat(JOB_COLUMNS).map((name) => el("th", { text: name }));
    if (withCheckbox) cells.unshift(el("th", { class: "check-col" }));
    $(theadId).replaceChildren(el("tr", null, cells));
  }

  function renderJobRows(items) {
    const list = state.list;
    clearListView();
    renderHead("jobs-head", false);
    const body = $("jobs-body");
    for (const job of items) {
      const row = buildJobRow(job, null);
      list.rows.set(job.id, row);
      list.jobs.set(job.id, job);
      body.append(row);
    }
    updateListChrome();
  }

  // The server reads a bounded part of a long history per page: a filter that matches few jobs
  // gets a short page, even an empty one, with a cursor further back. Only no cursor is the end.
  const FURTHER_BACK = "among the jobs this page searched; Next page looks further back.";

  function updateListChrome() {
    const list = state.list;
    const further = Boolean(list.nextCursor) && list.served < PAGE_SIZE;
    const empty = $("jobs-empty");
    empty.hidden = list.rows.size > 0 && !further;
    empty.textContent = !further ? "No jobs match." :
      `${list.rows.size ? "No more matches" : "No matches"} ${FURTHER_BACK}`;
    $("next-page").disabled = !list.nextCursor;
    $("first-page").disabled = !list.cursor;
    $("page-info").textContent = `page ${list.page} · ${list.rows.size} shown`;
  }

  function clearListView() {
    state.list.seq++;
    state.list.arrived = null;
    state.list.rows.clear();
    state.list.jobs.clear();
    $("jobs-body").replaceChildren();
  }

  /** One table row. `checkbox` = {checked, disabled, onChange} for the dead-letter view. */
  function buildJobRow(job, checkbox) {
    const row = el("tr", { testid: `job-row-${job.id}`, "data-status": job.status, "data-id": job.id });
    if (checkbox) {
      row.append(el("td", { class: "check-col" }, el("input", {
        type: "checkbox", testid: `dead-select-${job.id}`, "aria-label": `Select ${job.id}`,
        checked: checkbox.checked, disabled: checkbox.disabled, on: { change: checkbox.onChange },
      })));
    }
    if (isSystem()) row.append(el("td", { class: "mono", text: job.org }));
    row.append(
      el("td", { class: "mono id-cell" }, el("a", { href: jobHref(job.id), title: job.id, text: job.id })),
      el("td", { class: "mono", text: job.job_type }),
      el("td", null, badge(job.status)),
      el("td", { class: "prio", "data-priority": job.priority, text: job.priority }),
      el("td", { class: "progress-cell", title: job.progress_message || null }, progressBar(job.progress)),
      el("td", { class: "num", text: `${job.attempts ?? 0}` }),
      timeCell(job.created_at),
      timeCell(job.updated_at),
    );
    return row;
  }

  function matchesFilters(job, filters) {
    if (filters.status.length && !filters.status.includes(job.status)) return false;
    if (filters.job_type && job.job_type !== filters.job_type) return false;
    if (filters.priority && job.priority !== filters.priority) return false;
    return true;   // (a text search is the server's to decide: listAddSearched)
  }

  const isOlder = (incoming, known) =>
    Boolean(known && incoming.updated_at && known.updated_at &&
      Date.parse(incoming.updated_at) < Date.parse(known.updated_at));

  const isChildOf = (job, parentId) => Array.isArray(job.depends_on) && job.depends_on.includes(parentId);

  /** Note a child on its parent's known job; false when it was known already. */
  function addChild(parent, childId) {
    const children = Array.isArray(parent.dependents) ? parent.dependents : [];
    if (children.includes(childId)) return false;
    parent.dependents = children.concat(childId);
    return true;
  }

  function listOnJob(job) {
    const list = state.list;
    if (state.route.view !== "jobs") return;
    if (list.arrived) list.arrived.push(job);
    const row = list.rows.get(job.id);
    if (row) {
      const known = list.jobs.get(job.id);
      if (isOlder(job, known)) return;
      // (An event is the whole job object, as a GET gives it.) A filtered list shows only
      // the jobs that match it now: a job that completes leaves `status=running`. (Whether it
      // still matches a text search stays the server's call.)
      if (!matchesFilters(job, state.route.filters)) return listRemove(job.id);
      keepingFocus(row, () => replaceRow(list.rows, job.id, buildJobRow(job, null)));
      list.jobs.set(job.id, job);
      return;
    }
    // New jobs appear at the top of the first page only.
    if (list.cursor || list.rows.size >= MAX_LIVE_ROWS) return;
    if (state.route.filters.q) {
      listAddSearched(job);   // only the server can tell whether a job matches a text search
      return;
    }
    if (!matchesFilters(job, state.route.filters)) return;
    listInsert(job);
  }

  /** Newest first, as the server lists them (by creation; job ids sort by it too). */
  const isNewerJob = (a, b) => (a.created_at !== b.created_at ? a.created_at > b.created_at : a.id > b.id);

  /** A job the page did not show: on top when it is newer than every row (a new job), in its
   * place when it falls among them (it started to match a filter), and not at all when it is
   * older than every row while further pages exist: it belongs on one of those (an old job's
   * change had been put on top of page one, out of order, and shown on its own page too). */
  function listInsert(job) {
    const list = state.list;
    for (const row of $("jobs-body").children) {
      const shown = list.jobs.get(row.dataset.id);
      if (shown && isNewerJob(job, shown)) return listPlace(job, row);
    }
    if (list.nextCursor) return;
    listPlace(job, null);
  }

  /** New jobs while a text search is active: the server says whether they match (its search
   * runs on the stored JSON, which the page cannot reproduce exactly: number spelling, escapes,
   * the error's stored fields), by listing the newest matches with the same filters. One such
   * request at a time, at most one a second, for all the jobs that came meanwhile. Each job's
   * newest event is kept until then: the listing is read at one moment, and the events that
   * came while it was on its way are newer than what it says. */
  function listAddSearched(job) {
    const search = state.list.search;
    const known = search.pending.get(job.id);
    if (!isOlder(job, known)) search.pending.set(job.id, job);
    if (!search.busy) checkSearched();
  }

  async function checkSearched() {
    const list = state.list;
    const search = list.search;
    search.busy = true;
    try {
      while (search.pending.size) {
        const wait = search.last + STATS_MIN_INTERVAL_MS - Date.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        const ids = search.pending;
        search.pending = new Map();
        search.last = Date.now();
        const seq = list.seq;
        const query = filtersToQuery(state.route.filters);
        query.set("limit", String(PAGE_SIZE));
        let page;
        try {
          page = await api("GET", "/api/v1/jobs?" + query.toString());
        } catch (err) {
          continue;   // signed out, or the server is busy: the next reload shows them
        }
        if (seq !== list.seq || state.route.view !== "jobs" || list.cursor) continue;
        const found = ((page && page.items) || []).filter((job) => ids.has(job.id) && !list.rows.has(job.id));
        for (const listed of found) {   // each goes to its place among the rows
          // Shown as the newest of what the server listed and what the stream said before and
          // while it was asked: the job's later events went here, not to a row, and would be
          // lost under the listed state (a job shown `running` that had completed). Once it has
          // a row, its events update that row.
          let job = listed;
          for (const seen of [ids.get(listed.id), search.pending.get(listed.id)]) {
            if (seen && !isOlder(seen, job)) job = seen;
          }
          search.pending.delete(listed.id);
          if (matchesFilters(job, state.route.filters)) listInsert(job);
        }
      }
    } finally {
      search.busy = false;
    }
  }

  /** Show ``job`` in a row of its own before ``before`` (null: after every row). */
  function listPlace(job, before) {
    const list = state.list;
    const fresh = buildJobRow(job, null);
    $("jobs-body").insertBefore(fresh, before);
    list.rows.set(job.id, fresh);
    list.jobs.set(job.id, job);
    updateListChrome();
  }

  function replaceRow(rows, id, fresh) {
    rows.get(id).replaceWith(fresh);
    rows.set(id, fresh);
    return fresh;
  }

  function listRemove(id) {
    const list = state.list;
    list.rows.get(id).remove();
    list.rows.delete(id);
    list.jobs.delete(id);
    updateListChrome();
  }

  function rowOnProgress(rows, jobs, event) {
    const row = rows.get(event.job_id);
    if (!row) return;
    const job = jobs.get(event.job_id);
    if (isOlder(event, job)) return;   // a load's answer read after this report
    const bar = row.querySelector(".bar");
    if (bar) setProgressBar(bar, event.progress);
    const cell = row.querySelector(".progress-cell");
    if (cell) setTitle(cell, event.progress_message);   // the message shows on hover
    if (job) Object.assign(job, progressFields(event));
  }

  function setTitle(node, text) {
    if (text) node.setAttribute("title", text);
    else node.removeAttribute("title");
  }

  function progressFields(event) {
    const fields = { progress: event.progress, progress_message: event.progress_message, eta_s: event.eta_s };
    if (event.updated_at) fields.updated_at = event.updated_at;
    return fields;
  }

  /** Events that came while a view loaded are kept as they came: job objects, and progress
   * reports wrapped as {progressEvent}. Applied again on top of the answer, newest wins. */
  function replayArrived(item, onJob, onProgress) {
    if (item.progressEvent) onProgress(item.progressEvent);
    else onJob(item);
  }

  // ---------------------------------------------------------------- 10. job detail view

  async function loadDetail(id) {
    const detail = state.detail;
    const seq = ++detail.seq;
    detail.id = id;
    if (!detail.job) $("view-detail").replaceChildren(el("p", { class: "muted", text: "Loading…" }));
    const arrived = [];
    detail.arrived = arrived;
    const replace = detail.replace;
    detail.replace = false;
    try {
      const job = await api("GET", "/api/v1/jobs/" + enc(id));
      if (seq !== detail.seq) return;
      detail.arrived = null;
      // (A reload's answer older than what events already showed is not rendered — unless
      // the reload follows a `reset`: a restored database's job may be older than what the
      // page showed, and is still what is true now.)
      if (replace || !(detail.job && detail.job.id === id && isOlder(job, detail.job))) renderDetail(job);
      // The job may have changed while the answer was on its way (a busy server).
      for (const item of arrived) replayArrived(item, detailOnJob, detailOnProgress);
      loadAttempts(id);
    } catch (err) {
      if (seq !== detail.seq) return;
      detail.arrived = null;
      detail.job = null;
      $("view-detail").replaceChildren(
        el("p", null, el("a", { href: "#/jobs", text: "← Jobs" })),
        el("p", { class: "notfound", text: err.status === 404 ? `No job ${id}.` : err.message }),
      );
      showError(err);
    }
  }

  function clearDetailView() {
    state.detail.seq++;
    state.detail.attemptsSeq++;
    state.detail.id = null;
    state.detail.job = null;
    state.detail.arrived = null;
    $("view-detail").replaceChildren();
  }

  function renderDetail(job) {
    state.detail.job = job;
    const view = $("view-detail");
    const attempts = view.querySelector(".attempts") ||
      el("section", { class: "panel attempts" }, [el("h3", { text: "Attempts" }), el("div", { class: "attempts-body" })]);
    keepingFocus(view, () => {
      view.replaceChildren(detailHeader(job), detailProgress(job), detailFields(job), detailData(job), attempts);
      return view;
    });
  }

  function detailHeader(job) {
    const actions = el("div", { class: "actions" });
    if (canOperate() && !TERMINAL.has(job.status)) {
      actions.append(el("button", { type: "button", class: "btn btn-danger", testid: "btn-cancel", text: "Cancel",
        on: { click: (ev) => jobAction(job.id, "cancel", ev.currentTarget) } }));
    }
    if (canOperate() && RETRYABLE.has(job.status)) {
      actions.append(el("button", { type: "button", class: "btn btn-primary", testid: "btn-retry", text: "Retry",
        on: { click: (ev) => jobAction(job.id, "retry", ev.currentTarget) } }));
    }
    return el("div", { class: "detail-head" }, [
      el("a", { class: "back", href: "#/jobs", text: "← Jobs" }),
      el("h2", { class: "mono", text: job.id }),
      badge(job.status, "job-status"),
      el("span", { class: "muted mono", text: job.job_type }),
      actions,
    ]);
  }

  function detailProgress(job) {
    return el("div", { class: "panel detail-progress" }, [
      progressBar(job.progress, "job-progress"),
      el("span", { class: "progress-text", testid: "job-progress-text", text: progressText(job) }),
      el("span", { class: "eta muted", testid: "job-eta", text: TERMINAL.has(job.status) ? "" : fmtEta(job.eta_s) }),
    ]);
  }

  const progressText = (job) =>
    fmtPct(job.progress) + (job.progress_message ? ` — ${job.progress_message}` : "");

  function detailFields(job) {
    const fields = [
      ["org", job.org], ["job type", job.job_type], ["priority", job.priority],
      ["attempts", `${job.attempts ?? 0} (max retries ${job.max_retries ?? "—"})`],
      ["created", fmtTime(job.created_at)], ["updated", fmtTime(job.updated_at)],
      ["run at", fmtTime(job.run_at)], ["next retry", fmtTime(job.next_retry_at)],
      ["started", fmtTime(job.started_at)], ["finished", fmtTime(job.finished_at)],
    ];
    if (job.cancel_reason) fields.push(["cancel reason", job.cancel_reason]);
    const list = el("dl", { class: "fields" });
    for (const [name, value] of fields) list.append(el("dt", { text: name }), el("dd", { text: value ?? "—" }));
    list.append(el("dt", { text: "parents" }), el("dd", { testid: "job-parents" }, linkList(job.depends_on)));
    list.append(el("dt", { text: "children" }), el("dd", { testid: "job-children" }, linkList(job.dependents)));
    return el("section", { class: "panel" }, list);
  }

  function detailData(job) {
    const blocks = [
      el("div", { class: "block" }, [el("h3", { text: "Params" }), el("pre", { testid: "job-params", text: fmtJson(job.params) })]),
      el("div", { class: "block" }, [el("h3", { text: "Result" }), el("pre", { testid: "job-result", text: fmtJson(job.result) })]),
    ];
    if (job.error) {
      blocks.push(el("div", { class: "block block-wide" }, [
        el("h3", { text: "Error" }),
        el("pre", { class: "error-pre", testid: "job-error", text: fmtError(job.error) }),
      ]));
    }
    return el("section", { class: "panel data" }, blocks);
  }

  async function loadAttempts(id) {
    const seq = ++state.detail.attemptsSeq;
    let items;
    try {
      items = (await api("GET", `/api/v1/jobs/${enc(id)}/attempts`)).items || [];
    } catch (err) {
      if (seq === state.detail.attemptsSeq && err.status !== 401) showError(err);
      return;
    }
    const body = document.querySelector("#view-detail .attempts-body");
    if (seq !== state.detail.attemptsSeq || !body) return;
    // A traceback the user opened stays open when the table is read again.
    const opened = new Set(Array.from(body.querySelectorAll("details[open]"), (d) => d.getAttribute("data-traceback")));
    keepingFocus(body, () => {
      // In its own scroller, as the lists' tables: no row may widen the whole page.
      body.replaceChildren(el("div", { class: "table-wrap" }, attemptsTable(items, opened)));
      return body;
    });
  }

  /** `opened`: the data-traceback names of the tracebacks to show open. */
  function attemptsTable(items, opened) {
    const head = el("tr", null, ["#", "outcome", "started", "finished", "duration", "error"].map((t) => el("th", { text: t })));
    const rows = items.map((a) => {
      const duration = a.started_at && a.finished_at ? Date.parse(a.finished_at) - Date.parse(a.started_at) : NaN;
      return el("tr", { "data-attempt": a.attempt }, [
        el("td", { class: "num", text: String(a.attempt) }),
        el("td", null, a.outcome ? badge(a.outcome) : el("span", { class: "muted", text: "running" })),
        timeCell(a.started_at),
        timeCell(a.finished_at),
        el("td", { class: "num", text: fmtDuration(duration) }),
        el("td", { class: "attempt-error" }, attemptError(a, opened)),
      ]);
    });
    if (!rows.length) rows.push(el("tr", null, el("td", { colspan: 6, class: "muted", text: "No attempts yet." })));
    return el("table", { class: "attempts-table", testid: "attempts-table" }, [el("thead", null, head), el("tbody", null, rows)]);
  }

  function attemptError(attempt, opened) {
    const error = attempt.error;
    if (!error) return el("span", { class: "muted", text: "—" });
    const head = el("span", { class: "mono", text: [error.type, error.message].filter(Boolean).join(": ") });
    if (!error.traceback) return head;
    const name = `attempt-${attempt.attempt}-traceback`;
    return el("details", { "data-traceback": name, open: opened.has(name) }, [
      el("summary", { "data-focus": name }, head),
      el("pre", { text: error.traceback }),
    ]);
  }

  function detailOnJob(job) {
    const detail = state.detail;
    if (state.route.view !== "detail") return;
    if (detail.id !== job.id) return detailOnChild(job);
    if (detail.arrived) detail.arrived.push(job);
    if (!detail.job) return;
    if (isOlder(job, detail.job)) return;
    const statusChanged = job.status !== detail.job.status || job.attempts !== detail.job.attempts;
    renderDetail(job);   // an event is the whole job object, as a GET gives it
    if (statusChanged) loadAttempts(job.id);
  }

  /** A child submitted after the open job was read: no event of the parent tells of it (its
   * row does not change), the child's own event does, through its `depends_on`. */
  function detailOnChild(job) {
    const detail = state.detail;
    if (!isChildOf(job, detail.id)) return;
    if (detail.arrived) detail.arrived.push(job);   // the answer on its way may not know it yet
    if (!detail.job || !addChild(detail.job, job.id)) return;
    const children = document.querySelector('[data-testid="job-children"]');
    if (children) children.replaceChildren(linkList(detail.job.dependents));
  }

  function detailOnProgress(event) {
    const detail = state.detail;
    if (state.route.view !== "detail" || detail.id !== event.job_id || !detail.job) return;
    if (isOlder(event, detail.job)) return;
    Object.assign(detail.job, progressFields(event));
    const bar = document.querySelector('[data-testid="job-progress"]');
    if (bar) setProgressBar(bar, event.progress);
    const text = document.querySelector('[data-testid="job-progress-text"]');
    if (text) text.textContent = progressText(detail.job);
    const eta = document.querySelector('[data-testid="job-eta"]');
    if (eta) eta.textContent = fmtEta(event.eta_s);
  }

  async function jobAction(id, action, button) {
    if (button) button.disabled = true;
    try {
      const job = await api("POST", `/api/v1/jobs/${enc(id)}/${action}`);
      applyJob(job);
      const verb = action === "cancel" ? (job.status === "canceled" ? "canceled" : "cancel requested") : "requeued";
      showMessage(`Job ${id} ${verb}.`, "info");
    } catch (err) {
      showError(err);
      if (button && button.isConnected) button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- 11. dead-letter view

  async function loadDead(cursor) {
    const dead = state.dead;
    const seq = ++dead.seq;
    const query = new URLSearchParams({ status: "dead_letter", limit: String(DEAD_PAGE_SIZE) });
    if (cursor) query.set("cursor", cursor);
    // As for the job list: events that arrive before the answer are newer than it, and a first
    // page must not wipe the rows they added (jobs that just reached dead_letter).
    const arrived = [];
    dead.arrived = arrived;
    try {
      const data = await api("GET", "/api/v1/jobs?" + query.toString());
      if (seq !== dead.seq || state.route.view !== "dead") return;
      dead.arrived = null;
      if (!cursor) {
        clearDeadView();
        dead.seq = seq;
        renderHead("dead-head", canOperate());
      }
      for (const job of (data && data.items) || []) {
        if (dead.rows.has(job.id)) continue;
        dead.jobs.set(job.id, job);
        const row = buildDeadRow(job);
        dead.rows.set(job.id, row);
        $("dead-body").append(row);
      }
      dead.nextCursor = (data && data.next_cursor) || null;
      for (const item of arrived) replayArrived(item, deadOnJob, (event) => rowOnProgress(dead.rows, dead.jobs, event));
      updateDeadChrome();
    } catch (err) {
      if (seq === dead.seq) {
        dead.arrived = null;
        showError(err);
      }
    }
  }

  function buildDeadRow(job) {
    const dead = state.dead;
    const selectable = job.status === "dead_letter" && canOperate();
    if (!selectable) dead.selected.delete(job.id);
    return buildJobRow(job, canOperate() ? {
      checked: dead.selected.has(job.id),
      disabled: !selectable,
      onChange: (ev) => {
        if (ev.currentTarget.checked) dead.selected.add(job.id);
        else dead.selected.delete(job.id);
        updateDeadChrome();
      },
    } : null);
  }

  function clearDeadView() {
    const dead = state.dead;
    dead.seq++;
    dead.arrived = null;
    dead.rows.clear();
    dead.jobs.clear();
    dead.selected.clear();
    dead.nextCursor = null;
    $("dead-body").replaceChildren();
  }

  const selectableDeadIds = () =>
    Array.from(state.dead.jobs.values()).filter((j) => j.status === "dead_letter").map((j) => j.id);

  function updateDeadChrome() {
    const dead = state.dead;
    const selectable = selectableDeadIds();
    const all = $("dead-select-all");
    all.checked = selectable.length > 0 && selectable.every((id) => dead.selected.has(id));
    all.indeterminate = !all.checked && dead.selected.size > 0;
    $("dead-retry-selected").disabled = dead.selected.size === 0;
    $("dead-retry-selected").textContent = dead.selected.size ? `Retry selected (${dead.selected.size})` : "Retry selected";
    $("dead-empty").hidden = dead.rows.size > 0;
    $("dead-empty").textContent = dead.nextCursor ?
      "No dead-letter jobs among the jobs searched so far; Load more looks further back." : "No dead-letter jobs.";
    $("dead-more").hidden = !dead.nextCursor;
    $("dead-info").textContent = `${selectable.length} dead-letter job${selectable.length === 1 ? "" : "s"} shown`;
  }

  function onSelectAllDead(event) {
    const dead = state.dead;
    const checked = event.currentTarget.checked;
    for (const id of selectableDeadIds()) {
      if (checked) dead.selected.add(id);
      else dead.selected.delete(id);
      const box = dead.rows.get(id).querySelector("input[type=checkbox]");
      if (box) box.checked = checked;
    }
    updateDeadChrome();
  }

  /** One POST per job, a few at a time; every outcome is reflected in its row. */
  async function retrySelectedDead() {
    const ids = Array.from(state.dead.selected);
    if (!ids.length) return;
    const button = $("dead-retry-selected");
    button.disabled = true;
    const failures = [];
    let done = 0;
    const queue = ids.slice();
    const worker = async () => {
      for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
        try {
          applyJob(await api("POST", `/api/v1/jobs/${enc(id)}/retry`));
          state.dead.selected.delete(id);
          done++;
        } catch (err) {
          failures.push(`${id}: ${err.message}`);
          if (err.status === 401) return;
        }
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    if (state.route.view === "dead") updateDeadChrome();
    if (failures.length) showMessage(`Retried ${done}, failed ${failures.length}: ${failures.slice(0, 3).join("; ")}`, "error");
    else showMessage(`Retried ${done} job${done === 1 ? "" : "s"}.`, "info");
  }

  function deadOnJob(job) {
    const dead = state.dead;
    if (state.route.view !== "dead") return;
    if (dead.arrived) dead.arrived.push(job);
    const row = dead.rows.get(job.id);
    if (row) {
      const known = dead.jobs.get(job.id);
      if (isOlder(job, known)) return;
      dead.jobs.set(job.id, job);
      keepingFocus(row, () => replaceRow(dead.rows, job.id, buildDeadRow(job)));
    } else if (job.status === "dead_letter") {
      dead.jobs.set(job.id, job);
      const fresh = buildDeadRow(job);
      $("dead-body").prepend(fresh);
      dead.rows.set(job.id, fresh);
    } else {
      return;
    }
    updateDeadChrome();
  }

  // ---------------------------------------------------------------- 12. charts

  async function loadSeries() {
    const seq = ++state.seriesSeq;
    const arrived = [];
    state.seriesArrived = arrived;
    try {
      const data = await api("GET", "/api/v1/stats/timeseries");
      if (seq !== state.seriesSeq) return;
      state.series = ((data && data.minutes) || [])
        .map((m) => ({ t: Date.parse(m.t), completed: Number(m.completed) || 0, failed: Number(m.failed) || 0,
          queue_depth: Number(m.queue_depth) || 0 }))
        .filter((m) => Number.isFinite(m.t))
        .sort((a, b) => a.t - b.t)
        .slice(-SERIES_MINUTES);
      state.counted.clear();
      state.seriesFrom = Number(data && data.last_event_id) || 0;
    } catch (err) {
      if (err.status !== 401) console.warn("timeseries", err);
    }
    if (seq !== state.seriesSeq) return;
    state.seriesArrived = null;
    // Endings that came while the answer was on its way: those it did not include count now.
    for (const [job, eventId] of arrived) chartsOnJob(job, eventId);
    drawCharts();
  }

  /** The series entry for the minute holding `ms`, appending empty minutes up to it. */
  function ensureMinute(ms) {
    if (!state.started || !Number.isFinite(ms)) return null;
    const minute = Math.floor(ms / MINUTE_MS) * MINUTE_MS;
    const series = state.series;
    const last = series[series.length - 1];
    if (last && minute <= last.t) return series.find((m) => m.t === minute) || null;
    const depth = last ? last.queue_depth : 0;
    let t = last ? Math.max(last.t + MINUTE_MS, minute - (SERIES_MINUTES - 1) * MINUTE_MS) : minute;
    for (; t <= minute; t += MINUTE_MS) series.push({ t, completed: 0, failed: 0, queue_depth: depth });
    series.splice(0, Math.max(0, series.length - SERIES_MINUTES));
    return series[series.length - 1];
  }

  const endingKind = (job) =>
    job.status === "completed" ? "completed" : FAILED_FOR_CHART.has(job.status) ? "failed" : null;

  /** Count a job's ending in its minute; `eventId`: the SSE id of the event that told it (null
   * for an action's answer), so that an ending the series already holds is not counted twice.
   * Like the server, the chart counts a job once, at its latest ending: a job it counted that
   * is retried by hand has its earlier ending taken out again. */
  function chartsOnJob(job, eventId) {
    const kind = endingKind(job);
    const counted = state.counted.get(job.id);
    if (!kind && !counted) return;
    if (eventId) {
      if (state.seriesArrived) {
        state.seriesArrived.push([job, eventId]);
        return;
      }
      if (eventId <= state.seriesFrom) {
        // The series already counts this ending: remember it, so that a retry by hand that
        // comes later takes it out again (it was left in, counted twice, when the series
        // was read after the job had ended).
        if (kind && !counted) state.counted.set(job.id, { t: endingMinute(job), kind, updated_at: job.updated_at });
        return;
      }
    }
    if (counted && isOlder(job, counted)) return;   // an action's answer after newer events
    const t = kind ? endingMinute(job) : null;
    if (counted && counted.kind === kind && counted.t === t) return;   // the same ending again
    if (counted) uncountEnding(job.id);
    if (!kind) return;
    const minute = ensureMinute(t);
    state.counted.set(job.id, { t, kind, updated_at: job.updated_at });
    if (minute) minute[kind] += 1;
    scheduleChartDraw();
  }

  const minuteOf = (iso) => Math.floor(Date.parse(iso) / MINUTE_MS) * MINUTE_MS;
  const endingMinute = (job) => minuteOf(job.finished_at || job.updated_at);

  function uncountEnding(id) {
    const { t, kind } = state.counted.get(id);
    state.counted.delete(id);
    const minute = state.series.find((m) => m.t === t);
    if (minute && minute[kind] > 0) minute[kind] -= 1;
    scheduleChartDraw();
  }

  function scheduleChartDraw() {
    if (state.chartTimer) return;
    state.chartTimer = setTimeout(() => { state.chartTimer = null; drawCharts(); }, 250);
  }

  const CHART = { w: 600, h: 130, left: 34, right: 8, top: 8, bottom: 20 };

  function niceMax(value) {
    if (value <= 4) return Math.max(1, Math.ceil(value));
    const magnitude = 10 ** Math.floor(Math.log10(value));
    return [1, 2, 2.5, 5, 10].map((f) => f * magnitude).find((v) => v >= value);
  }

  /** Frame: gridlines, y labels (0, max/2, max), x labels (first, middle, last minute). */
  function chartFrame(svg, series, max) {
    const { w, h, left, right, top, bottom } = CHART;
    const plotH = h - top - bottom;
    for (const f of [0, 0.5, 1]) {
      const y = top + plotH * (1 - f);
      svg.append(svgEl("line", { class: "grid", x1: left, x2: w - right, y1: y, y2: y }));
      const label = f === 0.5 && max < 2 ? "" : String(Math.round(max * f * 10) / 10);
      svg.append(svgEl("text", { class: "axis", x: left - 4, y: y + 3, "text-anchor": "end", text: label }));
    }
    if (!series.length) {
      svg.append(svgEl("text", { class: "axis", x: w / 2, y: h / 2, "text-anchor": "middle", text: "no data yet" }));
      return;
    }
    const n = series.length;
    const mid = Math.floor((n - 1) / 2);
    const picks = [[0, xFor(0, n), "start"], [mid, xFor(mid, n) + slotWidth(n) / 2, "middle"],
      [n - 1, xFor(n - 1, n) + slotWidth(n), "end"]];
    for (const [i, x, anchor] of picks) {
      svg.append(svgEl("text", { class: "axis", x, y: h - 5, "text-anchor": anchor, text: fmtHM(series[i].t) }));
    }
  }

  const slotWidth = (n) => (CHART.w - CHART.left - CHART.right) / Math.max(n, SERIES_MINUTES);
  const xFor = (i, n) => CHART.left + i * slotWidth(n);
  const yFor = (v, max) => CHART.top + (CHART.h - CHART.top - CHART.bottom) * (1 - v / max);

  function newChartSvg(testid, label) {
    return svgEl("svg", { class: "chart-svg", viewBox: `0 0 ${CHART.w} ${CHART.h}`, role: "img",
      "aria-label": label, testid });
  }

  function drawThroughput(series) {
    const max = niceMax(Math.max(0, ...series.map((m) => m.completed + m.failed)));
    const svg = newChartSvg("chart-throughput", "Completed and failed jobs per minute");
    svg.setAttribute("data-completed", String(series.reduce((s, m) => s + m.completed, 0)));
    svg.setAttribute("data-failed", String(series.reduce((s, m) => s + m.failed, 0)));
    chartFrame(svg, series, max);
    const width = Math.max(1, slotWidth(series.length) - 1);
    series.forEach((m, i) => {
      const x = xFor(i, series.length);
      const yDone = yFor(m.completed, max);
      const yFail = yFor(m.completed + m.failed, max);
      const group = svgEl("g", { class: "slot" }, [
        svgEl("title", { text: `${fmtHM(m.t)}: ${m.completed} completed, ${m.failed} failed` }),
        svgEl("rect", { class: "hover", x, y: CHART.top, width: width + 1, height: yFor(0, max) - CHART.top }),
        svgEl("rect", { class: "bar-completed", x, y: yDone, width, height: yFor(0, max) - yDone }),
        svgEl("rect", { class: "bar-failed", x, y: yFail, width, height: yDone - yFail }),
      ]);
      svg.append(group);
    });
    return svg;
  }

  function drawDepth(series) {
    const max = niceMax(Math.max(0, ...series.map((m) => m.queue_depth)));
    const svg = newChartSvg("chart-depth", "Queue depth over time");
    svg.setAttribute("data-depth", series.length ? String(series[series.length - 1].queue_depth) : "0");
    chartFrame(svg, series, max);
    if (!series.length) return svg;
    const half = slotWidth(series.length) / 2;
    const points = series.map((m, i) => [xFor(i, series.length) + half, yFor(m.queue_depth, max)]);
    const line = points.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
    const base = yFor(0, max).toFixed(1);
    const area = `${line} L${points[points.length - 1][0].toFixed(1)},${base} L${points[0][0].toFixed(1)},${base} Z`;
    svg.append(svgEl("path", { class: "depth-area", d: area }), svgEl("path", { class: "depth-line", d: line }));
    series.forEach((m, i) => {
      svg.append(svgEl("g", { class: "slot" }, [
        svgEl("title", { text: `${fmtHM(m.t)}: ${m.queue_depth} waiting` }),
        svgEl("rect", { class: "hover", x: xFor(i, series.length), y: CHART.top, width: slotWidth(series.length),
          height: yFor(0, max) - CHART.top }),
      ]));
    });
    const [lx, ly] = points[points.length - 1];
    svg.append(svgEl("circle", { class: "depth-dot", cx: lx, cy: ly, r: 3 }));
    return svg;
  }

  function drawCharts() {
    $("chart-throughput-box").replaceChildren(drawThroughput(state.series));
    $("chart-depth-box").replaceChildren(drawDepth(state.series));
  }

  // ---------------------------------------------------------------- 13. live updates (SSE)

  function setLive(mode, label) {
    const node = $("live");
    node.setAttribute("data-state", mode);
    $("live-label").textContent = label || { open: "live", reconnecting: "reconnecting…", closed: "offline" }[mode];
  }

  function openEvents() {
    closeEvents();
    setLive("reconnecting", "connecting…");
    const events = state.events;
    // A new EventSource sends no Last-Event-ID header: resume through the query parameter.
    const resume = events.lastId ? "?last_event_id=" + enc(events.lastId) : "";
    if (resume) events.reloadOnOpen = false;
    const source = new EventSource(serverUrl("/api/v1/events") + resume);
    events.source = source;
    events.dropped = false;
    source.addEventListener("open", () => {
      if (source !== events.source) return;
      setLive("open");
      // The server answers again: a "cannot reach the server" said meanwhile no longer holds.
      if ($("message").dataset.code === "network_error") hideMessage();
      events.retryMs = 1000;
      // The browser resumes a dropped stream with Last-Event-ID by itself; without any event
      // id seen yet there is nothing to resume from, so whatever was missed is reloaded.
      const missed = events.dropped && !events.lastId;
      const reconnected = events.dropped;
      events.dropped = false;
      if (events.reloadOnOpen || missed) {
        events.reloadOnOpen = false;
        reloadAll();
      }
      // The browser reconnected with whatever session cookie it holds now.
      if (reconnected) checkIdentity();
    });
    source.addEventListener("error", () => onEventsError(source));
    source.addEventListener("job", (ev) => dispatch(ev, applyJob, true));
    source.addEventListener("progress", (ev) => dispatch(ev, applyProgress, false));
    source.addEventListener("reset", (ev) => { noteEventId(ev); reloadAll(); });
  }

  /** Resolves true once the current stream is open, false after `ms` without that. */
  function streamListening(ms) {
    const source = state.events.source;
    return new Promise((resolve) => {
      if (!source) return resolve(false);
      if (source.readyState === EventSource.OPEN) return resolve(true);
      const timer = setTimeout(() => resolve(false), ms);
      source.addEventListener("open", () => { clearTimeout(timer); resolve(true); }, { once: true });
    });
  }

  function noteEventId(event) {
    if (!event.lastEventId) return;
    state.events.lastId = event.lastEventId;
    // Shown on the live indicator: which event the page has reached (for a support look, and
    // for tests that must know an event arrived before they go on).
    $("live").setAttribute("data-last-event-id", event.lastEventId);
  }

  function closeEvents() {
    const events = state.events;
    clearTimeout(events.timer);
    events.timer = null;
    if (events.source) events.source.close();
    events.source = null;
  }

  /** The browser retries (with Last-Event-ID) by itself unless the stream is CLOSED. */
  function onEventsError(source) {
    if (source !== state.events.source || !state.started) return;
    state.events.dropped = true;
    setLive("reconnecting");
    if (source.readyState !== EventSource.CLOSED) return;
    source.close();
    state.events.source = null;
    state.events.reloadOnOpen = true;
    scheduleEventsReopen();
  }

  function scheduleEventsReopen() {
    const events = state.events;
    clearTimeout(events.timer);
    events.timer = setTimeout(async () => {
      if (!state.started) return;
      try {
        const me = await api("GET", "/api/v1/whoami");   // a 401 here shows the login form
        if (!state.started) return;
        if (identityChanged(me)) return restartSession(me);
        const resumable = Boolean(state.events.lastId);
        openEvents();
        state.events.reloadOnOpen = !resumable;
      } catch (err) {
        if (err.status === 401 || !state.started) return;
        events.retryMs = Math.min(events.retryMs * 2, 30000);
        scheduleEventsReopen();
      }
    }, events.retryMs);
  }

  function dispatch(event, handler, refreshCounts) {
    noteEventId(event);
    let data;
    try {
      data = JSON.parse(event.data);
    } catch (err) {
      console.warn("bad event data", event.type, err);
      return;
    }
    if (!data || typeof data !== "object") return;
    handler(data, Number(event.lastEventId) || null);
    if (refreshCounts) scheduleStatsRefresh();
  }

  /** A job object from an event (with its id) or an action's response: update every view
   * that shows it. */
  function applyJob(job, eventId = null) {
    if (!job || !job.id) return;
    listOnJob(job);
    deadOnJob(job);
    detailOnJob(job);
    chartsOnJob(job, eventId);
  }

  function applyProgress(event) {
    if (!event.job_id) return;
    for (const view of [state.list, state.dead, state.detail]) {
      if (view.arrived) view.arrived.push({ progressEvent: event });   // a load is on its way
    }
    rowOnProgress(state.list.rows, state.list.jobs, event);
    rowOnProgress(state.dead.rows, state.dead.jobs, event);
    detailOnProgress(event);
  }

  // ---------------------------------------------------------------- 14. start

  function wireControls() {
    buildCounts();
    const statusSelect = $("filter-status");
    for (const status of STATUSES) statusSelect.append(el("option", { value: status, text: status }));
    $("login-form").addEventListener("submit", onLoginSubmit);
    $("logout").addEventListener("click", logout);
    $("message-close").addEventListener("click", hideMessage);
    $("filters").addEventListener("submit", onSearchSubmit);
    for (const id of ["filter-status", "filter-type", "filter-priority"]) $(id).addEventListener("change", applyFilterControls);
    $("filters-clear").addEventListener("click", clearFilters);
    $("next-page").addEventListener("click", () => state.list.nextCursor && loadJobs(state.list.nextCursor));
    $("first-page").addEventListener("click", () => loadJobs(null));
    $("dead-select-all").addEventListener("change", onSelectAllDead);
    $("dead-retry-selected").addEventListener("click", retrySelectedDead);
    $("dead-more").addEventListener("click", () => state.dead.nextCursor && loadDead(state.dead.nextCursor));
    window.addEventListener("hashchange", route);
    setLive("closed");
    drawCharts();
  }

  // The sticky top bar's height (its count chips wrap on narrow screens), so that a control
  // reached with the keyboard is scrolled clear of it, not left underneath (scroll-padding-top).
  function trackTopbarHeight() {
    const bar = document.querySelector(".topbar");
    if (!bar || typeof ResizeObserver === "undefined") return;
    const set = () => document.documentElement.style.setProperty("--topbar-h", bar.offsetHeight + "px");
    new ResizeObserver(set).observe(bar);
    set();
  }

  document.addEventListener("DOMContentLoaded", () => {
    trackTopbarHeight();
    wireControls();
    boot();
  });
})();
