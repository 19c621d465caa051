#!/usr/bin/env python3
"""bench/purge_bench.py -- what DELETE /v1/sessions/{id} costs in the request, and what ingest into another
session sees meanwhile, for two daemon builds side by side (docs/STORE.md, "Deleting a session";
docs/RESULTS.md, "Session delete in O(1)").

    python3 bench/purge_bench.py BEFORE/memattnd AFTER/memattnd [EVENTS ...]   (default 65536 524288)

For each size, each daemon in turn (BEFORE first, the same machine minutes apart): a fresh --data
directory, a session sessions "big1" and "big2" (H = 1, d = d_v = 64: 512 bytes an event, selector chunks, so that no index
build runs in the background) fed EVENTS events each in batches of 4,096 (k_b64/v_b64), and a session
"other". (1) DELETE big1 alone: its latency, the bytes the daemon wrote to disk during it (/proc/PID/io
write_bytes: the WAL and any checkpoint; the purge thread of AFTER starts within that window, so its
first steps count too), the WAL file's size after it, then the purge's duration and bytes after the
answer until the daemon's purge queue is empty (/metrics memattn_sessions_purging; at once for a daemon
without it). (2) A client posts batches of 64 events into "other" one after the other on its own
connection: 3 s alone (the baseline), then DELETE big2 is sent on another connection, and the client goes
on until the delete has answered and the purge queue is empty, plus 1 s: the latencies (p50 / p99 / max,
ms) of the batches that overlapped the delete or its purge, against the baseline's. The ratios
after/before are of the same run.
"""
import base64, http.client, json, os, random, shutil, struct, subprocess, sys, tempfile, threading, time


def body(seed, n):
    rnd = random.Random(seed)
    evs = []
    for _ in range(n):
        k = base64.b64encode(struct.pack("<64f", *[rnd.uniform(-1, 1) for _ in range(64)])).decode()
        v = base64.b64encode(struct.pack("<64f", *[rnd.uniform(-1, 1) for _ in range(64)])).decode()
        evs.append({"k_b64": k, "v_b64": v})
    return json.dumps({"events": evs})


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))] if xs else float("nan")


def write_bytes(pid):
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def metric(c, name):
    """The value of an unlabelled metric, None when the daemon has no such metric."""
    c.request("GET", "/metrics")
    r = c.getresponse()
    text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def wait_purged(c):
    """Polls /metrics until the purge queue is empty (at once for a daemon without the gauge); the gauges
    are refreshed by every answered job, so a GET /v1/sessions goes first."""
    while True:
        c.request("GET", "/v1/sessions")
        c.getresponse().read()
        if not metric(c, "memattn_sessions_purging"):
            return
        time.sleep(0.05)


def run(binary, events, big_bodies, small_body):
    d = tempfile.mkdtemp(prefix="memattn-purge-", dir=os.environ.get("BENCH_TMP"))
    p = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--data", d + "/data", "--max-body", "67108864"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        host, port = p.stdout.readline().strip().split()[-1].rsplit(":", 1)
        port = int(port)
        c = http.client.HTTPConnection(host, port, timeout=600)
        cfg = json.dumps({"dim": 64, "value_dim": 64, "selector": "chunks"})
        for sid in ("big1", "big2", "other"):
            c.request("PUT", "/v1/sessions/" + sid, cfg)
            c.getresponse().read()
        for sid in ("big1", "big2"):
            for i in range(0, events, 4096):
                c.request("POST", "/v1/sessions/%s/events" % sid, big_bodies[(i // 4096) % len(big_bodies)])
                r = c.getresponse()
                r.read()
                if r.status != 200:
                    sys.exit("%s: POST events answered %d" % (binary, r.status))
        wal = d + "/data/memattn.db-wal"
        out = {}
        # 1. big1 deleted alone: the request's latency and what the daemon wrote meanwhile.
        time.sleep(1)
        w0 = write_bytes(p.pid)
        t0 = time.monotonic()
        c.request("DELETE", "/v1/sessions/big1")
        r = c.getresponse()
        r.read()
        t1 = time.monotonic()
        w1 = write_bytes(p.pid)
        if r.status != 204:
            sys.exit("%s: DELETE answered %d" % (binary, r.status))
        out["wal_mib"] = (os.path.getsize(wal) if os.path.exists(wal) else 0) / 2**20
        wait_purged(c)
        out.update(delete_ms=(t1 - t0) * 1e3, written_mib=(w1 - w0) / 2**20, purge_s=time.monotonic() - t1,
                   purge_written_mib=(write_bytes(p.pid) - w1) / 2**20)
        # 2. big2 deleted while a client ingests into "other": its batches' latencies, alone and during.
        lat = []          # (start, end) of each ingest batch
        stop = threading.Event()

        def ingest():
            ci = http.client.HTTPConnection(host, port, timeout=600)
            while not stop.is_set():
                s0 = time.monotonic()
                ci.request("POST", "/v1/sessions/other/events", small_body)
                r = ci.getresponse()
                r.read()
                if r.status != 200:
                    sys.exit("ingest answered %d" % r.status)
                lat.append((s0, time.monotonic()))
        th = threading.Thread(target=ingest)
        th.start()
        time.sleep(3)
        t0 = time.monotonic()
        c.request("DELETE", "/v1/sessions/big2")
        r = c.getresponse()
        r.read()
        wait_purged(c)
        t2 = time.monotonic()
        time.sleep(1)
        stop.set()
        th.join()
        out["base"] = [e - s for s, e in lat if e < t0]
        out["during"] = [e - s for s, e in lat if e >= t0 and s <= t2]
        return out
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    before, after = sys.argv[1], sys.argv[2]
    sizes = [int(x) for x in sys.argv[3:]] or [65536, 524288]
    print("load average: %s" % open("/proc/loadavg").read().strip(), flush=True)
    big = [body(s, 4096) for s in range(4)]
    small = body(99, 64)
    for n in sizes:
        res = {}
        for name, binary in (("before", before), ("after", after)):
            r = run(binary, n, big, small)
            res[name] = r
            ms = lambda xs, q: pct(xs, q) * 1e3
            print("%8d events %-6s DELETE %9.1f ms, written in it %8.2f MiB, WAL after %7.2f MiB, purge after "
                  "the answer %6.2f s writing %7.1f MiB; ingest into another session, ms p50/p99/max: alone "
                  "%.1f/%.1f/%.1f (%d), during delete+purge %.1f/%.1f/%.1f (%d)"
                  % (n, name, r["delete_ms"], r["written_mib"], r["wal_mib"], r["purge_s"], r["purge_written_mib"],
                     ms(r["base"], 50), ms(r["base"], 99), max(r["base"]) * 1e3, len(r["base"]),
                     ms(r["during"], 50), ms(r["during"], 99), max(r["during"] or [0]) * 1e3, len(r["during"])),
                  flush=True)
        b, a = res["before"], res["after"]
        print("%8d events after/before: DELETE latency %.4f, bytes written in it %.4f; ingest during, p99 %.2f, "
              "max %.2f" % (n, a["delete_ms"] / b["delete_ms"], a["written_mib"] / max(b["written_mib"], 1e-9),
                            pct(a["during"], 99) / pct(b["during"], 99),
                            max(a["during"]) / max(b["during"])), flush=True)
    print("load average: %s" % open("/proc/loadavg").read().strip(), flush=True)


if __name__ == "__main__":
    main()
