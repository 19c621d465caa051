#!/usr/bin/env bash
# bench/idem_bench.sh — what an Idempotency-Key costs (docs/RESULTS.md, "Idempotency-Key overhead";
# docs/API.md, "Safe retries").
#
#   bench/idem_bench.sh [N] [BATCH]     (default N = 200 requests per variant, BATCH = 256 events; python3)
#
# One daemon (build/memattnd, release build, fresh --data, synchronous=FULL as shipped), one session
# (H = 1, d = 64, slots 64), one keep-alive connection. Two workloads, each as N pairs of requests: an
# event batch of BATCH events (k_b64/v_b64 vectors, a short payload each) and a slot PUT (a payload, a
# new version of one of 32 slots). Each pair is one request without a key and one with a fresh
# Idempotency-Key, in an order drawn by a coin, so both variants see the same disk, the same neighbours
# (the machine is shared) and the same share of batches that rebuild the archive's index. Printed per workload and variant: p50, p99, max and mean latency, and the
# ratios keyed / plain; then a retry of every keyed request (its replay), the daemon's VmHWM and what the
# idempotency table holds.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
BATCH=${2:-256}
make -s build/memattnd >/dev/null
TMP=$(mktemp -d /tmp/memattn-idembench-XXXXXX)
DPID=
trap '[ -n "$DPID" ] && kill $DPID 2>/dev/null; wait 2>/dev/null || true; rm -rf "$TMP"' EXIT
build/memattnd --listen 127.0.0.1:0 --data "$TMP/data" --log-level warn >"$TMP/out" 2>"$TMP/err" &
DPID=$!
for _ in $(seq 100); do grep -q '^listening on' "$TMP/out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(sed -n 's/^listening on //p' "$TMP/out")
python3 - "$ADDR" "$N" "$BATCH" "$DPID" "$TMP/data/memattn.db" <<'PY'
import base64, http.client, json, os, random, sqlite3, struct, sys, time
addr, n, batch, pid, db = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
host, port = addr.rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port))
rng = random.Random(7)
order = random.Random(11)
def call(method, path, body, key=None, want=(200, 201)):
    h = {"Content-Type": "application/json"}
    if key:
        h["Idempotency-Key"] = key
    t0 = time.perf_counter()
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    dt = (time.perf_counter() - t0) * 1000
    if r.status not in want:
        sys.exit(f"{method} {path} -> {r.status} {data[:200]!r}")
    return dt, r.getheader("Idempotent-Replayed")
def vec():
    return base64.b64encode(struct.pack("<64f", *[rng.uniform(-1, 1) for _ in range(64)])).decode()
def events_body(i):
    return json.dumps({"events": [{"k_b64": vec(), "v_b64": vec(), "payload": f"e{i}.{j}"} for j in range(batch)]})
def slot_body(i):
    return json.dumps({"payload": f"value {i}"})
call("PUT", "/v1/sessions/b", json.dumps({"dim": 64, "heads": 1, "slots": 64}))
def stats(t):
    t = sorted(t)
    return t[len(t) // 2], t[min(len(t) - 1, int(len(t) * 0.99))], t[-1], sum(t) / len(t)
print(f"Idempotency-Key overhead, release build, synchronous=FULL, {n} requests per variant, interleaved")
print("| workload | variant | p50 | p99 | max | mean |")
print("|---|---|---|---|---|---|")
replays = {}
summary = []
for name, method, path, body in (("event batch of %d" % batch, "POST", lambda i: "/v1/sessions/b/events", events_body),
                                  ("slot PUT", "PUT", lambda i: f"/v1/sessions/b/slots/s{i % 32}", slot_body)):
    plain, keyed, keys = [], [], []
    bodies = [body(i) for i in range(2 * n)]   # built before timing
    for i in range(n):
        a, b = bodies[2 * i], bodies[2 * i + 1]
        key = f"bench-{name[:4]}-{i}-{rng.getrandbits(64):016x}"
        if order.random() < 0.5:   # a fair coin, not i % 2: batch positions that trigger work of their
                                   # own (an index rebuild at a multiple of 1024 events) must not fall
                                   # on one variant
            plain.append(call(method, path(2 * i), a)[0])
            keyed.append(call(method, path(2 * i + 1), b, key)[0])
        else:
            keyed.append(call(method, path(2 * i + 1), b, key)[0])
            plain.append(call(method, path(2 * i), a)[0])
        keys.append((path(2 * i + 1), b, key))
    sp, sk = stats(plain), stats(keyed)
    for label, s in (("no key", sp), ("Idempotency-Key", sk)):
        print(f"| {name} | {label} | {s[0]:.2f} ms | {s[1]:.2f} ms | {s[2]:.2f} ms | {s[3]:.2f} ms |")
    summary.append((name, sk[0] / sp[0], sk[1] / sp[1], sk[3] / sp[3]))
    rt = []
    for p, b, key in keys[: min(len(keys), 100)]:
        dt, rep = call(method, p, b, key)
        if rep != "true":
            sys.exit(f"retry of {key} was not replayed")
        rt.append(dt)
    replays[name] = stats(rt)
print()
print("| workload | keyed / plain p50 | p99 | mean | replay p50 | replay p99 |")
print("|---|---|---|---|---|---|")
for name, r50, r99, rmean in summary:
    rp = replays[name]
    print(f"| {name} | {r50:.2f} | {r99:.2f} | {rmean:.2f} | {rp[0]:.2f} ms | {rp[1]:.2f} ms |")
hwm = [l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM")][0]
con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
rows, body_bytes = con.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM idempotency").fetchone()
print(f"\ndaemon VmHWM {int(hwm) / 1024:.0f} MiB; idempotency table: {rows} rows, {body_bytes / max(rows, 1):.0f} body bytes per row")
PY
