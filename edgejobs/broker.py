"""In-process fan-out of the event log to Server-Sent Events subscribers.

One :class:`Broker` per :class:`~edgejobs.app.EdgeJobs` (see :func:`get_broker`) runs ONE
tailer task. The tailer is woken after every commit of this process that wrote events, and
when another process committed to the database; it reads the new rows of the ``events`` table
in id order and hands each one to the subscribers it is meant for.

Tenant isolation is enforced here, not by the callers: before an event reaches any queue, the
org written on the event row is compared with the org of its job as stored in the ``jobs``
table (read in the same snapshot, or remembered from an earlier read: a job's org never
changes). An event that fails the check is dropped and logged. A subscriber of org A is only
ever indexed under A, and the stream checks the org once more before it writes an event out.

Every subscriber has a bounded queue (``[events] subscriber_buffer``). A subscriber whose queue
is full is disconnected at once and its queue released, so a client that stops reading never
makes the server buffer without bound; it resumes with ``Last-Event-ID``. In a burst the tailer
waits briefly for streams that fell behind, but only within a small share of its time per
stream (:class:`PacingAllowance`), so one tenant's slow client cannot set the pace of the others.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import TYPE_CHECKING

from sse_starlette import ServerSentEvent

from edgejobs.errors import RateLimited, ShuttingDown
from edgejobs.store import events as event_store
from edgejobs.store.db import WriteTx
from edgejobs.store.rows import JobEventExtras, render_job_event

if TYPE_CHECKING:
    from edgejobs.app import EdgeJobs

log = logging.getLogger("edgejobs.broker")

TAIL_BATCH = 1000
"""Rows read per query by the tailer and per replay page."""
SAFETY_POLL_S = 2.0
"""The tailer also looks for new rows this often, in case a wake-up was missed."""
DRAIN_WAIT_S = 0.1
"""How long the tailer may wait for streams that fell behind before it hands out more events."""
PACING_BURST_S = 0.5
"""What one stream may hold the tailer back in a burst (its pacing allowance when full)."""
PACING_SHARE = 0.05
"""What one stream may hold the tailer back in the long run: this share of the time (its
allowance refills at this many seconds per second). A stream that needs more, its client
reading slower than events arrive, is not waited for: its queue fills and it is disconnected,
to resume with ``Last-Event-ID`` from the log, instead of pacing every other stream."""
TAILER_PACING_BURST_S = 1.0
"""What all streams together may hold the tailer back in a burst."""
TAILER_PACING_SHARE = 0.2
"""What all streams together may hold the tailer back in the long run (a share of the time):
many slow streams, each within its own share, still cannot stall the others."""
SUBSCRIBER_MAX_BYTES = 32 * 1024 * 1024
"""What one stream may hold queued, in bytes of event data, beyond its first event (events
carry their job's params and result, up to ``max_params_bytes`` and the result bound each):
past it the stream is disconnected like one whose queue is full."""
ORG_CACHE_SIZE = 16384
"""Job ids whose org the broker remembers (jobs may be deleted before their last event is read)."""


class Event:
    """One event as it goes out on a stream; encoded once, shared by every subscriber."""

    __slots__ = ("_encoded", "created_at", "data", "extras", "id", "job_id", "kind", "org", "size")

    def __init__(
        self,
        *,
        id: int,
        org: str,
        job_id: str,
        kind: str,
        data: str,
        created_at: int,
        extras: JobEventExtras | None = None,
    ) -> None:
        self.id = id
        self.org = org
        self.job_id = job_id
        self.kind = kind
        self.data = data
        self.created_at = created_at
        self.extras = extras
        self.size = len(data) + (_extras_size(extras) if extras is not None else 0)
        """About the bytes this event holds (what a stream's queue is bounded by)."""
        self._encoded: bytes | None = None

    def encode(self) -> bytes:
        """The SSE wire form: ``id``, ``event`` (the kind) and ``data`` (JSON) lines.

        A ``job`` event is stored with integer times; it is rendered to the API's form here,
        once, and only for events some stream actually sends.
        """
        if self._encoded is None:
            try:
                data = (
                    render_job_event(self.data, self.job_id, self.org, self.extras)
                    if self.kind == "job"
                    else self.data
                )
            except Exception as exc:
                # A row this version cannot read (written by hand, or by an older edgejobs
                # that kept running on a file a newer one had migrated) is skipped, saying so:
                # raised, it ended every stream that met it, and every resume met it again.
                # Its id is still sent, so a client's Last-Event-ID moves past it.
                log.error(
                    "event %d of job %s cannot be read, skipped: %r", self.id, self.job_id, exc
                )
                self._encoded = ServerSentEvent(
                    comment=f"event {self.id} could not be read", id=str(self.id)
                ).encode()
                return self._encoded
            self._encoded = ServerSentEvent(data, event=self.kind, id=str(self.id)).encode()
        return self._encoded

    def __repr__(self) -> str:
        return f"Event(id={self.id}, kind={self.kind!r}, org={self.org!r}, job_id={self.job_id!r})"


def _extras_size(extras: JobEventExtras) -> int:
    texts = (extras.params, extras.result, extras.depends_on, extras.dependents, extras.traceback)
    return sum(len(text) for text in texts if text is not None)


def reset_event(last_id: int, reason: str) -> Event:
    """A ``reset`` event: the client missed events that cannot be replayed and should reload.

    Its id is the newest event id, so a client that reconnects after it resumes from there.
    """
    data = json.dumps({"reason": reason, "last_event_id": last_id}, separators=(",", ":"))
    return Event(id=last_id, org="", job_id="", kind="reset", data=data, created_at=0)


class PacingAllowance:
    """How long someone may still make the tailer wait: refills at ``share`` seconds per second
    up to ``burst`` seconds, and is spent by the time actually waited (a token bucket)."""

    __slots__ = ("_at", "_left", "burst", "share")

    def __init__(self, burst: float, share: float, now: float) -> None:
        self.burst = burst
        self.share = share
        self._left = burst
        self._at = now

    def left(self, now: float) -> float:
        """Seconds of waiting still allowed at ``now`` (a monotonic time)."""
        if now > self._at:
            self._left = min(self.burst, self._left + (now - self._at) * self.share)
            self._at = now
        return self._left

    def spend(self, seconds: float, now: float) -> None:
        """Take ``seconds`` of waiting, ended at ``now``."""
        self._left = self.left(now) - seconds


class Subscriber:
    """One open stream: its filter (org, job id) and a bounded queue of events."""

    def __init__(
        self,
        *,
        org: str | None,
        job_id: str | None,
        buffer: int,
        start_id: int,
        max_bytes: int = SUBSCRIBER_MAX_BYTES,
        owner: str | None = None,
        session: str | None = None,
    ) -> None:
        self.org = org
        """The org this stream is for; None for a system token's all-orgs stream."""
        self.job_id = job_id
        """Only events of this job when set."""
        self.owner = owner
        """The token this stream was opened with (counted against its limit), if any."""
        self.session = session
        """The hash of the dashboard session this stream was opened with, if any."""
        self.start_id = start_id
        """Every event with an id above this one reaches the queue (older ones: replay)."""
        self.closed_reason: str | None = None
        """Why the stream was ended by the server (None while it is open)."""
        self._buffer = buffer
        self._max_bytes = max_bytes
        self._bytes = 0
        self._queue: collections.deque[Event] = collections.deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._cancel: Callable[[], object] | None = None
        self.pacing = PacingAllowance(
            PACING_BURST_S, PACING_SHARE, asyncio.get_running_loop().time()
        )
        """How long this stream may still make the tailer wait for it to read."""

    @property
    def qsize(self) -> int:
        """Events waiting to be written to the client."""
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """About the bytes of the events waiting to be written to the client."""
        return self._bytes

    def fuller_than_half(self) -> bool:
        """Whether more than half of the queue's events or bytes are taken."""
        return len(self._queue) > self._buffer // 2 or self._bytes > self._max_bytes // 2

    @property
    def closed(self) -> bool:
        """Whether the server ended this stream."""
        return self.closed_reason is not None

    def matches(self, event: Event) -> bool:
        """Whether ``event`` belongs on this stream (org and job filter)."""
        if self.org is not None and event.org != self.org:
            return False
        return self.job_id is None or event.job_id == self.job_id

    def offer(self, event: Event) -> bool:
        """Queue an event; False (nothing queued) when the queue is full (in events, or in bytes
        with at least one event queued)."""
        if self.closed:
            return True
        if len(self._queue) >= self._buffer:
            return False
        if self._queue and self._bytes + event.size > self._max_bytes:
            return False
        self._queue.append(event)
        self._bytes += event.size
        self._wake.set()
        return True

    async def take(self, timeout: float, limit: int = 64) -> list[Event]:
        """Up to ``limit`` queued events (waiting at most ``timeout`` seconds for the first);
        empty after the timeout or when the stream was closed."""
        if not self._queue and not self.closed:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, timeout)):
                    await self._wake.wait()
        if self.closed or not self._queue:
            return []
        queue = self._queue
        events = [queue.popleft() for _ in range(min(limit, len(queue)))]
        self._bytes -= sum(event.size for event in events)
        self._room.set()
        return events

    async def drained(self) -> None:
        """Return once at most half the queue is taken (:meth:`fuller_than_half` is False) or
        the stream is closed."""
        while self.fuller_than_half() and not self.closed:
            self._room.clear()
            await self._room.wait()

    def bind_cancel(self, cancel: Callable[[], object]) -> None:
        """Set how to abort the stream's response at once (used for :meth:`close` with force)."""
        self._cancel = cancel

    def close(self, reason: str, *, force: bool = False) -> None:
        """End the stream. ``force`` aborts a response stuck writing to a client that stopped
        reading; otherwise the stream ends after the write in progress."""
        if self.closed_reason is None:
            self.closed_reason = reason
        self._queue.clear()
        self._bytes = 0
        self._wake.set()
        self._room.set()
        if force and self._cancel is not None:
            self._cancel()


class Broker:
    """Tails the event log once per process and fans events out to subscribers."""

    def __init__(self, ej: EdgeJobs) -> None:
        self._ej = ej
        settings = ej.config.events
        self.buffer = settings.subscriber_buffer
        self.replay_max_events = settings.replay_max_events
        self.replay_max_age_s = settings.replay_max_age_s
        self.keepalive_s = settings.keepalive_s
        self.max_streams_per_owner = settings.max_streams_per_token
        """How many streams one token (its dashboard sessions included) may hold open; 0: no
        limit. Each is a connection and a queue: one tenant's client could otherwise take
        every file descriptor of the server and lock every other tenant out."""
        self._owned: collections.Counter[str] = collections.Counter()
        self.max_bytes = SUBSCRIBER_MAX_BYTES
        """The byte bound of each new stream's queue (see :data:`SUBSCRIBER_MAX_BYTES`)."""
        self.last_id = 0
        """The newest event id handed to subscribers."""
        self._by_org: dict[str | None, set[Subscriber]] = {}
        self._org_cache: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._closed = False
        self._start_lock = asyncio.Lock()
        self.dropped = 0
        """Events dropped by the org check (or whose job could not be found)."""
        self.disconnected = 0
        """Subscribers disconnected because their queue was full."""
        self._pacing: PacingAllowance | None = None  # made on the event loop, at the first wait
        self.paced_s = 0.0
        """Seconds the tailer waited for streams to read while others were open (see
        :data:`PACING_SHARE`)."""
        ej.add_commit_listener(self._on_commit)
        ej.add_foreign_listener(self._on_foreign_commit)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the tailer runs (between :meth:`start` and :meth:`close`)."""
        return self._running

    async def start(self) -> None:
        """Open the database if needed and start the tailer from the newest event."""
        async with self._start_lock:
            if self._running:
                return
            await self._ej.open()
            self.last_id = await self._ej.store.read(event_store.last_event_id)
            self._running = True
            self._closed = False
            self._task = asyncio.create_task(self._tail_forever(), name="edgejobs-broker")

    async def ensure_started(self) -> None:
        """Start unless running or closed for shutdown (for apps served without a lifespan)."""
        if not self._running and not self._closed:
            await self.start()

    async def close(self, grace_s: float = 1.0) -> None:
        """End every stream and stop the tailer.

        Streams end after the write in progress; one still open after ``grace_s`` (its client
        stopped reading) is aborted, so a server shutdown never waits on a client.
        """
        self._running = False
        self._closed = True
        for subscriber in self.subscribers():
            subscriber.close("the server is shutting down")
        if not self._empty.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._empty.wait()
        for subscriber in self.subscribers():
            subscriber.close("the server is shutting down", force=True)
            self.unsubscribe(subscriber)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- subscribers --------------------------------------------------------------------------

    def subscribe(
        self,
        *,
        org: str | None,
        job_id: str | None = None,
        owner: str | None = None,
        session: str | None = None,
    ) -> Subscriber:
        """Register a stream for ``org`` (None: every org). Events newer than
        :attr:`Subscriber.start_id` reach its queue from now on.

        ``owner`` (a token id) may hold at most :attr:`max_streams_per_owner` streams at once:
        :class:`~edgejobs.errors.RateLimited` beyond. ``session`` (a session id's hash) marks a
        stream of a dashboard session, which :meth:`end_session` ends.
        """
        if not self._running:
            raise ShuttingDown("the event stream is not running")
        if owner is not None:
            limit = self.max_streams_per_owner
            if limit and self._owned[owner] >= limit:
                raise RateLimited(
                    f"this token already holds {limit} open event streams ([events]"
                    " max_streams_per_token); close one first",
                    retry_after_s=max(1, int(self.keepalive_s)),
                )
            self._owned[owner] += 1
        subscriber = Subscriber(
            org=org,
            job_id=job_id,
            buffer=self.buffer,
            start_id=self.last_id,
            max_bytes=self.max_bytes,
            owner=owner,
            session=session,
        )
        self._by_org.setdefault(org, set()).add(subscriber)
        self._empty.clear()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Forget a stream (idempotent)."""
        group = self._by_org.get(subscriber.org)
        if group is not None and subscriber in group:
            group.discard(subscriber)
            if not group:
                del self._by_org[subscriber.org]
            if subscriber.owner is not None:
                self._owned[subscriber.owner] -= 1
                if not self._owned[subscriber.owner]:
                    del self._owned[subscriber.owner]
        if not self._by_org:
            self._empty.set()

    def end_session(self, session: str) -> int:
        """Close every stream of the dashboard session ``session`` (a session id's hash) at
        once; returns how many. A logout ends its streams now, not at their next credentials
        check, which is as far as ``[events] keepalive_s`` away."""
        ended = [s for s in self.subscribers() if s.session == session]
        for subscriber in ended:
            subscriber.close("the session ended")
        return len(ended)

    def subscribers(self) -> list[Subscriber]:
        """Every open stream."""
        return [s for group in self._by_org.values() for s in group]

    @property
    def subscriber_count(self) -> int:
        """How many streams are open."""
        return sum(len(group) for group in self._by_org.values())

    def queue_sizes(self) -> list[int]:
        """Queued events per open stream (each at most ``subscriber_buffer``)."""
        return [s.qsize for s in self.subscribers()]

    # -- the tailer ---------------------------------------------------------------------------

    def _on_commit(self, tx: WriteTx) -> None:
        if tx.events and self._running:
            self._wake.set()

    def _on_foreign_commit(self) -> None:
        if self._running:
            self._wake.set()

    async def _tail_forever(self) -> None:
        while self._running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SAFETY_POLL_S):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.catch_up()
            except Exception as exc:  # a busy or closing database must not end the tailer
                if self._running and self._ej.store.is_open:
                    log.warning("reading new events failed (will retry): %s", exc)
                await asyncio.sleep(0.2)

    async def catch_up(self) -> None:
        """Read every event newer than :attr:`last_id` and hand it to its subscribers."""
        while True:
            rows = await self._ej.store.read(
                partial(event_store.tail, after=self.last_id, limit=TAIL_BATCH)
            )
            await self._dispatch(rows)
            if len(rows) < TAIL_BATCH:
                return

    async def _dispatch(self, rows: list[event_store.EventRow]) -> None:
        # A burst (a batch of 1,000 submissions, a cascade, a few jobs with big params) is
        # handed out until some stream's queue is half full, in events or in bytes; then the
        # streams that fell behind may drain (for a short, bounded time) before the rest, so a
        # healthy client is not disconnected merely because a big burst arrived at once, while
        # one that stopped reading still fills its queue and is disconnected.
        for row in rows:
            if row.id <= self.last_id:
                continue  # two overlapping reads: the first one delivered it
            if self.last_id and row.id > self.last_id + 1:
                self._missed(self.last_id, row.id)
            self.last_id = row.id
            event = self.verify(row)
            if event is not None and self._fan_out(event):
                await self._let_streams_drain()

    def _missed(self, after: int, found: int) -> None:
        """Events after ``after`` and before ``found`` were deleted before this tailer read
        them: the log's trim keeps the newest ``replay_max_events`` whatever the tailer has
        read, and the tailer fell that far behind (a burst while a stream was slow). Every open
        stream missed them, and went on as if nothing was missing; each is ended now, so that
        its client resumes with ``Last-Event-ID`` and, the missed events being gone, gets a
        ``reset`` and reloads. (Ids have no other gaps: the log loses only its oldest rows.)"""
        log.warning(
            "events %d to %d were deleted before they were sent to the open streams (the"
            " event reader fell behind the log's trim); ending %d stream(s) so that their"
            " clients resume and reload",
            after + 1,
            found - 1,
            len(self.subscribers()),
        )
        for subscriber in self.subscribers():
            self.unsubscribe(subscriber)
            subscriber.close("events were missed: resume with Last-Event-ID")

    async def _let_streams_drain(self) -> None:
        """Wait (at most ``DRAIN_WAIT_S``) until no stream's queue is more than half full.

        While other streams are open, each stream may hold the tailer back only within its
        pacing allowance, and all of them within the tailer's: a client that keeps reading
        slower than events arrive would otherwise set the pace of every other tenant's stream
        (one reading 640 events/s made another's burst of 6,000 events take 19 times as long).
        Past its allowance a stream is not waited for, fills its queue and is disconnected; it
        resumes from the log. A stream alone holds back nobody: it is waited for as before.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + DRAIN_WAIT_S
        if self._pacing is None:
            self._pacing = PacingAllowance(TAILER_PACING_BURST_S, TAILER_PACING_SHARE, now)
        tailer = self._pacing
        while True:
            now = loop.time()
            shared = self.subscriber_count > 1
            behind = next(
                (
                    s
                    for s in self.subscribers()
                    if s.fuller_than_half() and (not shared or s.pacing.left(now) > 0)
                ),
                None,
            )
            if behind is None:
                return
            remaining = deadline - now
            if shared:
                remaining = min(remaining, behind.pacing.left(now), tailer.left(now))
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await behind.drained()
            waited = loop.time() - now
            if shared:
                behind.pacing.spend(waited, now + waited)
                tailer.spend(waited, now + waited)
                self.paced_s += waited

    def _fan_out(self, event: Event) -> bool:
        """Offer ``event`` to its streams; True when it made one of them more than half full
        (once per crossing: a stream that stopped reading does not slow every later event)."""
        full: list[Subscriber] = []
        behind = False
        for key in (event.org, None):
            for subscriber in self._by_org.get(key, ()):
                if not subscriber.matches(event):
                    continue
                was_behind = subscriber.fuller_than_half()
                if not subscriber.offer(event):
                    full.append(subscriber)
                elif not was_behind and subscriber.fuller_than_half():
                    behind = True
        for subscriber in full:
            self.disconnected += 1
            log.warning(
                "disconnected an event stream of org %s: %d events (%d bytes) queued and the"
                " client is not reading, or reads slower than events arrive (it can resume with"
                " Last-Event-ID)",
                subscriber.org or "*",
                subscriber.qsize,
                subscriber.queued_bytes,
            )
            self.unsubscribe(subscriber)
            subscriber.close("the client did not keep up with the events", force=True)
        return behind

    # -- the org check ------------------------------------------------------------------------

    def verify(self, row: event_store.EventRow) -> Event | None:
        """The event of ``row`` if it passes the org check; None (logged) when it fails.

        The reference is the org of the job as stored in the ``jobs`` table, never anything a
        handler or a caller supplied.
        """
        stored = row.job_org
        if stored is not None:
            self._remember(row.job_id, stored)
        else:
            stored = self._org_cache.get(row.job_id)
        if stored is None:
            self.dropped += 1
            log.info("event %d dropped: job %s no longer exists", row.id, row.job_id)
            return None
        if stored != row.org:
            self.dropped += 1
            log.error(
                "event %d dropped: it names org %r but job %s belongs to org %r",
                row.id,
                row.org,
                row.job_id,
                stored,
            )
            return None
        return Event(
            id=row.id,
            org=row.org,
            job_id=row.job_id,
            kind=row.kind,
            data=row.data,
            created_at=row.created_at,
            extras=row.extras,
        )

    def _remember(self, job_id: str, org: str) -> None:
        cache = self._org_cache
        if job_id in cache:
            cache.move_to_end(job_id)
            return
        cache[job_id] = org
        if len(cache) > ORG_CACHE_SIZE:
            cache.popitem(last=False)

    # -- replay -------------------------------------------------------------------------------

    async def backlog(self, subscriber: Subscriber, after: int) -> AsyncIterator[Event]:
        """What a client that last saw event ``after`` missed before it subscribed.

        Yields the missed events of the subscriber's org (and job) in id order, or a single
        ``reset`` event when they are no longer all in the replay window: more than
        ``replay_max_events`` back, older than ``replay_max_age_s``, already pruned, or an id
        this database never issued.
        """
        upto = subscriber.start_id
        if after > upto:
            yield reset_event(upto, "the last event id is unknown to this server")
            return
        min_created_at = self._ej.clock.now_ms() - int(self.replay_max_age_s * 1000)
        window = await self._ej.store.read(
            partial(
                event_store.check_window,
                after=after,
                upto=upto,
                max_events=self.replay_max_events,
                min_created_at=min_created_at,
            )
        )
        if not window.replayable:
            yield reset_event(upto, window.reason or "the missed events cannot be replayed")
            return
        cursor = after
        while cursor < upto:
            rows = await self._ej.store.read(
                partial(
                    event_store.replay,
                    after=cursor,
                    upto=upto,
                    org=subscriber.org,
                    job_id=subscriber.job_id,
                    limit=TAIL_BATCH,
                )
            )
            if rows is None:  # trimmed since the window was checked (a slow client)
                yield reset_event(upto, "some missed events were deleted while they were sent")
                return
            for row in rows:
                event = self.verify(row)
                if event is not None and subscriber.matches(event):
                    yield event
            if len(rows) < TAIL_BATCH:
                return
            cursor = rows[-1].id


_brokers: weakref.WeakKeyDictionary[EdgeJobs, Broker] = weakref.WeakKeyDictionary()


def get_broker(ej: EdgeJobs) -> Broker:
    """The broker of ``ej`` (created on first use; one per instance, so one tailer)."""
    broker = _brokers.get(ej)
    if broker is None:
        broker = Broker(ej)
        _brokers[ej] = broker
    return broker
