"""Prototype (measurement only, not product code): the store's writer in its own PROCESS.

What it measures: end-to-end jobs/s for N no-op jobs (default 20,000, 16 worker slots) when
the write connection lives in a child process that serves operations sent as data, and the
parent's asyncio loop keeps C claim cycles in flight (C = 2, 3, 4; slots split between C
groups, each group with at most one cycle in the writer at a time), against the product's
own figures measured in the same run, alternating:

- proto_many_C: one insert of all N jobs, then the drain;
- proto_50_C: 50 coroutines each submitting one job at a time (awaiting its commit) while the
  drain runs; the submissions of one event-loop turn go out as one insert operation;
- product_many / product_50: ``bench/edgejobs_subject.py`` ``end_to_end(N, mode=...)``;
- floor: ``write_plan_floor(N)`` (the store's writes alone on one thread).

The child (``subprocess`` + an AF_UNIX socketpair, length-prefixed frames) owns the only write
connection (``connect_writer`` with ``Store(...).pragmas``: WAL, synchronous=NORMAL). It
reads every frame that is waiting, runs all their operations in ONE ``BEGIN IMMEDIATE``
transaction (one SAVEPOINT per operation, as the product's writer does), commits, and only
then answers with ONE frame holding every operation's result as plain tuples. Operations:
``("i", rid, [(org, type, params_json), ...])`` → the new ids; ``("c", rid, items, K)`` →
``complete_attempts(items)`` then ``claim_ready(slots=K)`` → (completed count, claimed rows).
It calls the same store functions as ``write_plan_floor``.

The parent: one asyncio loop reads the socket with ``loop.add_reader``; everything the loop
wants to send in one turn goes out as one frame (``call_soon`` flush). A claimed job runs as
one task per job (``--run task``, as the pool does) or as a plain coroutine step
(``--run call``: ``coro.send(None)``, no task). An idle group (its claim came back empty)
re-arms its claim behind the next submission, in the same frame, hence the same transaction.

Left out compared with the product (per job): SSE/job events in the parent, commit
listeners, ``Job`` objects for callers, per-attempt deadline timers, lease renewal, the
handler context object, ticks/maintenance, error handling and retries.

Run (from the repository root, with the project's interpreter)::

    PYTHONPATH=. python bench/experiments/writer_process.py compare --repeats 5
    PYTHONPATH=. python bench/experiments/writer_process.py one proto_many_2 [--codec pickle]
    PYTHONPATH=. python bench/experiments/writer_process.py ipc      # per-cycle IPC cost
    PYTHONPATH=. python bench/experiments/writer_process.py profile  # cProfile of the product

Each measurement runs in a fresh interpreter; ``compare`` prints one JSON line per run and a
table of medians at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import marshal
import pickle
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
sys.path.insert(0, str(BENCH))

HDR = struct.Struct("<I")


def codec(name):
    if name == "marshal":
        return marshal.dumps, marshal.loads
    return (lambda o: pickle.dumps(o, protocol=5)), pickle.loads


def proc_cpu_s(pid):
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except OSError:
            pass
    return total / 1e9


# ----------------------------------------------------------------------------- child (writer)


def child_main(fd, db, codec_name, echo, tx_cycles=0):
    dumps, loads = codec(codec_name)
    backlog = []
    sock = socket.socket(fileno=fd)
    if not echo:
        from edgejobs.store.claim import ClaimLimits, claim_ready
        from edgejobs.store.db import WriteTx, connect_writer
        from edgejobs.store.jobs import NewJob, insert_jobs
        from edgejobs.store.store import Store
        from edgejobs.store.transitions import complete_attempts

        store = Store(Path(db))
        conn = connect_writer(store.path, store.pragmas)
        limits = ClaimLimits(types=frozenset({"noop"}))
    buf = bytearray()
    st = dict(
        tx=0,
        ops=0,
        tx_s=0.0,
        wait_s=0.0,
        decode_s=0.0,
        encode_s=0.0,
        jobs_claimed=0,
        frames=0,
        max_ops=0,
        cpu_tx_s=0.0,
        cpu_codec_s=0.0,
        cpu_all_s=0.0,
    )
    canned = [(i, f"J{i:025d}", "bench", "noop", "running", 2, '{"i":1}', 1, 0) for i in range(16)]
    while True:
        t0 = time.perf_counter()
        frames = []
        # block for at least one full frame, then take whatever else is already waiting
        while True:
            pos = 0
            while len(buf) - pos >= 4:
                (n,) = HDR.unpack_from(buf, pos)
                if len(buf) - pos - 4 < n:
                    break
                frames.append(bytes(buf[pos + 4 : pos + 4 + n]))
                pos += 4 + n
            del buf[:pos]
            if frames or backlog:
                try:
                    more = sock.recv(1 << 20, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if not more:
                    return
                buf += more
                continue
            more = sock.recv(1 << 20)
            if not more:
                return
            buf += more
        t1 = time.perf_counter()
        st["wait_s"] += t1 - t0
        c1 = time.thread_time()
        for f in frames:
            backlog.extend(loads(f))
        st["frames"] += len(frames)
        if tx_cycles:
            # at most tx_cycles claim cycles per transaction: the others wait for the next
            k = 0
            for j, op in enumerate(backlog):  # noqa: B007  (j is read after the loop)
                if op[0] == "c":
                    k += 1
                    if k > tx_cycles:
                        break
            else:
                j = len(backlog)
            ops, backlog = backlog[:j], backlog[j:]
        else:
            ops, backlog = backlog, []
        t2 = time.perf_counter()
        c2 = time.thread_time()
        st["cpu_codec_s"] += c2 - c1
        st["decode_s"] += t2 - t1
        replies = []
        if echo:
            for op in ops:
                if op[0] == "c":
                    replies.append((op[1], len(op[2]), canned[: op[3]]))
                elif op[0] == "s":
                    replies.append((op[1], st))
                else:
                    replies.append((op[1], None))
        else:
            now = int(time.time() * 1000)
            tx = WriteTx()
            conn.execute("BEGIN IMMEDIATE")
            # consecutive submissions are written together (one savepoint, one executemany),
            # as the product's writer merges plain submissions
            k = 0
            while k < len(ops):
                if ops[k][0] != "i":
                    k += 1
                    continue
                run_ = []
                while k < len(ops) and ops[k][0] == "i":
                    run_.append(ops[k])
                    k += 1
                jobs = [NewJob(o, t, p, 2, None, 3, None) for op in run_ for (o, t, p) in op[2]]
                conn.execute("SAVEPOINT op")
                ins = insert_jobs(conn, tx, jobs=jobs, now=now)
                conn.execute("RELEASE op")
                pos = 0
                for op in run_:
                    replies.append((op[1], [it.row["id"] for it in ins[pos : pos + len(op[2])]]))
                    pos += len(op[2])
            for op in ops:
                kind = op[0]
                if kind == "c":
                    conn.execute("SAVEPOINT op")
                    done = complete_attempts(conn, tx, items=op[2], now=now) if op[2] else ()
                    rows = claim_ready(
                        conn, tx, now=now, slots=op[3], lease_ms=30_000, limits=limits
                    )
                    conn.execute("RELEASE op")
                    st["jobs_claimed"] += len(rows)
                    replies.append((op[1], len(done), [tuple(r) for r in rows]))
                elif kind == "i":
                    continue  # merged below
                elif kind == "s":
                    replies.append((op[1], st))
            tx.flush(conn)
            conn.execute("COMMIT")
        t3 = time.perf_counter()
        c3 = time.thread_time()
        st["cpu_tx_s"] += c3 - c2
        st["tx_s"] += t3 - t2
        st["tx"] += 1
        st["ops"] += len(ops)
        st["max_ops"] = max(st["max_ops"], len(ops))
        data = dumps(replies)
        sock.sendall(HDR.pack(len(data)) + data)
        st["encode_s"] += time.perf_counter() - t3
        c4 = time.thread_time()
        st["cpu_codec_s"] += c4 - c3
        st["cpu_all_s"] = c4


# ----------------------------------------------------------------------------- parent


class Client:
    def __init__(self, loop, sock, codec_name):
        self.loop = loop
        self.sock = sock
        self.dumps, self.loads = codec(codec_name)
        self.out = []
        self.cbs = {}
        self.rid = 0
        self.flush_armed = False
        self.buf = bytearray()
        self.frames_out = 0
        self.frames_in = 0
        self.ipc_s = 0.0  # parent time to encode+send and recv+decode
        loop.add_reader(sock.fileno(), self._readable)

    def send(self, op, cb):
        self.rid += 1
        self.cbs[self.rid] = cb
        self.out.append((op[0], self.rid, *op[1:]))
        if not self.flush_armed:
            self.flush_armed = True
            self.loop.call_soon(self._flush)

    def _flush(self):
        t = time.perf_counter()
        self.flush_armed = False
        ops, self.out = self.out, []
        data = self.dumps(ops)
        self.sock.sendall(HDR.pack(len(data)) + data)
        self.frames_out += 1
        self.ipc_s += time.perf_counter() - t

    def _readable(self):
        t = time.perf_counter()
        data = self.sock.recv(1 << 20)
        if not data:
            self.loop.remove_reader(self.sock.fileno())
            return
        self.buf += data
        pos = 0
        replies = []
        buf = self.buf
        while len(buf) - pos >= 4:
            (n,) = HDR.unpack_from(buf, pos)
            if len(buf) - pos - 4 < n:
                break
            replies.extend(self.loads(bytes(buf[pos + 4 : pos + 4 + n])))
            self.frames_in += 1
            pos += 4 + n
        del buf[:pos]
        self.ipc_s += time.perf_counter() - t
        cbs = self.cbs
        for r in replies:
            cbs.pop(r[0])(r)


async def noop(row):
    return None


class Group:
    def __init__(self, pool, slots):
        self.pool = pool
        self.slots = slots
        self.outcomes = []
        self.running = 0
        self.idle = False

    def start_cycle(self):
        self.idle = False
        out, self.outcomes = self.outcomes, []
        self.pool.client.send(("c", out, self.slots), self.on_reply)
        self.pool.cycles += 1

    def on_reply(self, reply):
        _, ncomp, rows = reply
        pool = self.pool
        pool.completed += ncomp
        if pool.completed >= pool.n and not pool.done.done():
            pool.done.set_result(None)
        if not rows:
            self.idle = True
            pool.idle.append(self)
            return
        self.running = len(rows)
        if pool.run == "task":
            create = pool.loop.create_task
            for row in rows:
                t = create(noop(row))
                t.add_done_callback(lambda t, s=row[0], a=row[7]: self.job_done(s, a, t))
        else:
            for row in rows:
                coro = noop(row)
                try:
                    coro.send(None)
                except StopIteration:
                    pass
                self.outcomes.append((row[0], row[7], "null"))
            self.running = 0
            self.start_cycle()

    def job_done(self, seq, attempt, task):
        task.result()
        self.outcomes.append((seq, attempt, "null"))
        self.running -= 1
        if self.running == 0:
            self.start_cycle()


class Pool:
    def __init__(self, loop, client, n, workers, cycles, run):
        self.loop = loop
        self.client = client
        self.n = n
        self.run = run
        self.completed = 0
        self.cycles = 0
        self.done = loop.create_future()
        per = [workers // cycles + (1 if i < workers % cycles else 0) for i in range(cycles)]
        self.groups = [Group(self, k) for k in per]
        self.idle = []

    def start(self):
        for g in self.groups:
            g.start_cycle()

    def wake(self):
        idle, self.idle = self.idle, []
        for g in idle:
            g.start_cycle()


def spawn_child(db, codec_name, echo=False, tx_cycles=0):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "child",
            str(b.fileno()),
            str(db),
            codec_name,
            "1" if echo else "0",
            str(tx_cycles),
        ],
        pass_fds=(b.fileno(),),
    )
    b.close()
    return proc, a


def proto_run(n, *, mode, cycles, workers=16, codec_name="marshal", run="task", tx_cycles=0):
    from edgejobs.store.store import Store

    with tempfile.TemporaryDirectory(prefix="bench-writerproc-") as tmp:
        db = Path(tmp) / "proto.db"
        store = Store(db)
        store.prepare()
        proc, sock = spawn_child(db, codec_name, tx_cycles=tx_cycles)
        try:
            return asyncio.run(_proto_main(n, mode, cycles, workers, codec_name, run, proc, sock))
        finally:
            sock.close()
            proc.wait(timeout=10)


async def _proto_main(n, mode, cycles, workers, codec_name, run, proc, sock):
    loop = asyncio.get_running_loop()
    client = Client(loop, sock, codec_name)
    # warm the child (imports, connection) before timing
    f = loop.create_future()
    client.send(("s",), f.set_result)
    await f
    pool = Pool(loop, client, n, workers, cycles, run)
    cpu_parent0 = time.process_time()
    cpu_child0 = proc_cpu_s(proc.pid)
    start = time.perf_counter()
    if mode == "many":
        f = loop.create_future()
        client.send(
            ("i", [("bench", "noop", json.dumps({"i": i})) for i in range(n)]), f.set_result
        )
        await f
        pool.start()
    else:
        pending = list(range(n))
        pool.idle = list(pool.groups)
        for g in pool.groups:
            g.idle = True

        def submit(i):
            fut = loop.create_future()
            client.send(("i", [("bench", "noop", json.dumps({"i": i}))]), fut.set_result)
            if pool.idle:
                pool.wake()  # claim right behind the insert: same frame, same transaction
            return fut

        async def submitter():
            while pending:
                i = pending.pop()
                await submit(i)

        await asyncio.gather(*(submitter() for _ in range(50)))
    await pool.done
    elapsed = time.perf_counter() - start
    cpu_parent = time.process_time() - cpu_parent0
    cpu_child = proc_cpu_s(proc.pid) - cpu_child0
    f = loop.create_future()
    client.send(("s",), f.set_result)
    st = (await f)[1]
    loop.remove_reader(sock.fileno())
    return {
        "jobs_s": n / elapsed,
        "elapsed_s": elapsed,
        "parent_cpu_pct": cpu_parent / elapsed * 100,
        "child_cpu_pct": cpu_child / elapsed * 100,
        "parent_cpu_us_per_job": cpu_parent / n * 1e6,
        "child_cpu_us_per_job": cpu_child / n * 1e6,
        "cycles": pool.cycles,
        "frames_out": client.frames_out,
        "frames_in": client.frames_in,
        "parent_ipc_us_per_frame_pair": client.ipc_s / max(1, client.frames_in) * 1e6,
        "child_tx": st["tx"],
        "child_ops_per_tx": st["ops"] / max(1, st["tx"]),
        "child_jobs_per_tx": st["jobs_claimed"] / max(1, st["tx"]),
        "child_tx_us": st["tx_s"] / max(1, st["tx"]) * 1e6,
        "child_busy_pct": (st["tx_s"] + st["decode_s"] + st["encode_s"]) / elapsed * 100,
        "child_codec_us_per_tx": (st["decode_s"] + st["encode_s"]) / max(1, st["tx"]) * 1e6,
        "child_cpu_tx_us": st["cpu_tx_s"] / max(1, st["tx"]) * 1e6,
        "child_cpu_codec_us_per_tx": st["cpu_codec_s"] / max(1, st["tx"]) * 1e6,
        "child_cpu_tx_us_per_job": st["cpu_tx_s"] / n * 1e6,
    }


# ----------------------------------------------------------------------------- IPC cost


def ipc_cost(codec_name, rounds=20000):
    """Per-cycle IPC: a 16-outcome request and a 16-row claim answer through an echo child
    (no SQL), one cycle in flight, read with loop.add_reader as above."""
    proc, sock = spawn_child("-", codec_name, echo=True)
    dumps, loads = codec(codec_name)
    items = [(i, 1, "null") for i in range(16)]
    canned = [(i, f"J{i:025d}", "bench", "noop", "running", 2, '{"i":1}', 1, 0) for i in range(16)]
    req = [("c", 1, items, 16)]
    rep = [(1, 16, canned)]
    t = time.perf_counter()
    for _ in range(rounds):
        loads(dumps(req))
        loads(dumps(rep))
    codec_us = (time.perf_counter() - t) / rounds * 1e6
    size = (len(dumps(req)), len(dumps(rep)))

    async def main():
        loop = asyncio.get_running_loop()
        client = Client(loop, sock, codec_name)
        for _ in range(200):
            f = loop.create_future()
            client.send(("c", items, 16), f.set_result)
            await f
        c0 = proc_cpu_s(proc.pid)
        p0 = time.process_time()
        t0 = time.perf_counter()
        for _ in range(rounds):
            f = loop.create_future()
            client.send(("c", items, 16), f.set_result)
            await f
        el = time.perf_counter() - t0
        return (
            el / rounds * 1e6,
            (time.process_time() - p0) / rounds * 1e6,
            (proc_cpu_s(proc.pid) - c0) / rounds * 1e6,
        )

    try:
        rtt, pcpu, ccpu = asyncio.run(main())
    finally:
        sock.close()
        proc.wait(timeout=10)
    return {
        "codec": codec_name,
        "rtt_us": rtt,
        "parent_cpu_us": pcpu,
        "child_cpu_us": ccpu,
        "encode_decode_both_ways_us": codec_us,
        "bytes_req_rep": size,
    }


# ----------------------------------------------------------------------------- product


def product(kind, n):
    import edgejobs_subject as s

    c0 = time.process_time()
    if kind == "floor8":
        el = s.write_plan_floor(n, batch=8)
    elif kind == "product_many":
        el = s.end_to_end(n, mode="submit_many")
    elif kind == "product_50":
        el = s.end_to_end(n, mode="submit_50")
    else:
        el = s.write_plan_floor(n)
    cpu = time.process_time() - c0
    return {"jobs_s": n / el, "elapsed_s": el, "cpu_us_per_job": cpu / n * 1e6}


def one(kind, n, codec_name, run):
    if kind.startswith("proto_"):
        # proto_<many|50>_<cycles in flight>[_t<max claim cycles per transaction>]
        parts = kind.split("_")
        tx_cycles = int(parts[3][1:]) if len(parts) > 3 else 0
        return proto_run(
            n,
            mode=parts[1],
            cycles=int(parts[2]),
            codec_name=codec_name,
            run=run,
            tx_cycles=tx_cycles,
        )
    return product(kind, n)


def compare(kinds, repeats, n, codec_name, run):
    results = {k: [] for k in kinds}
    for r in range(repeats):
        for k in kinds:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "one",
                    k,
                    "--n",
                    str(n),
                    "--codec",
                    codec_name,
                    "--run",
                    run,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[k].append(res)
            print(json.dumps({"round": r, "kind": k, **res}), flush=True)
    print()
    med = {k: statistics.median(x["jobs_s"] for x in v) for k, v in results.items()}
    for k, v in results.items():
        runs = " ".join(f"{x['jobs_s']:.0f}" for x in v)
        extra = ""
        if k.startswith("proto_"):
            keys = (
                "parent_cpu_pct",
                "child_cpu_pct",
                "child_busy_pct",
                "child_tx_us",
                "child_jobs_per_tx",
                "child_ops_per_tx",
                "parent_cpu_us_per_job",
                "child_cpu_us_per_job",
            )
            extra = " ".join(f"{kk}={statistics.median(x[kk] for x in v):.1f}" for kk in keys)
        else:
            extra = f"cpu_us_per_job={statistics.median(x['cpu_us_per_job'] for x in v):.1f}"
        print(f"{k:16s} median {med[k]:8.0f} jobs/s  [{runs}] {extra}")
    for ref in ("product_many", "product_50", "floor"):
        if ref in med:
            print(" ".join(f"{k}/{ref}={med[k] / med[ref]:.2f}" for k in med if k != ref))


def profile(n, mode):
    import cProfile
    import pstats

    import edgejobs_subject as s

    pr = cProfile.Profile()
    pr.enable()
    s.end_to_end(n, mode=mode)
    pr.disable()
    st = pstats.Stats(pr)
    st.sort_stats("tottime").print_stats(45)
    st.sort_stats("cumulative").print_stats(60)


if __name__ == "__main__":
    if sys.argv[1] == "child":
        child_main(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "1", int(sys.argv[6]))
        sys.exit(0)
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd")
    ap.add_argument("kinds", nargs="*")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--codec", default="marshal")
    ap.add_argument("--run", default="task")
    ap.add_argument("--mode", default="submit_many")
    a = ap.parse_intermixed_args()
    if a.cmd == "one":
        print(json.dumps(one(a.kinds[0], a.n, a.codec, a.run)))
    elif a.cmd == "ipc":
        for c in ("marshal", "pickle"):
            print(json.dumps(ipc_cost(c)))
    elif a.cmd == "profile":
        profile(a.n, a.mode)
    else:
        kinds = a.kinds or [
            "product_many",
            "product_50",
            "floor",
            "proto_many_2",
            "proto_many_3",
            "proto_many_4",
            "proto_50_2",
            "proto_50_3",
            "proto_50_4",
        ]
        compare(kinds, a.repeats, a.n, a.codec, a.run)
