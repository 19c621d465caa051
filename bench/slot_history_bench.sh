#!/usr/bin/env bash
# bench/slot_history_bench.sh — what one slot PUT costs through REST as the slot history grows
# (docs/RESULTS.md, "Slot PUT latency against history"; issue 9 item 1).
#
#   bench/slot_history_bench.sh [PUTS]      (default 40 PUTs per point; needs python3)
#
# One session (H = 1, d = 64, M = 64) per point; its history is built with events carrying a write
# signal for one slot name (batches of 5,000 `text` events, each a new version of slot `h`), so a point
# of 50,000 versions takes 10 requests; then PUTS overwrites of another slot through
# PUT /v1/sessions/{id}/slots/{name}, one at a time on one keep-alive connection: p50, p90, p99 and max in
# ms, and the daemon's peak RSS (VmHWM) after the point. The daemon is build/memattnd (release build) with
# a fresh --data directory and --max-body 64M, so every PUT commits with synchronous=FULL
# (docs/STORE.md). The ratio 50k/0 (of the medians) is the figure of the issue. Then the daemon is
# restarted and the first read of the 50k session (GET .../slots/h?version=1, which loads the session:
# its slot state and every version row) is timed, with the daemon's VmHWM after it.
set -euo pipefail
cd "$(dirname "$0")/.."
PUTS=${1:-40}
make -s build/memattnd >/dev/null
TMP=$(mktemp -d /tmp/memattn-slothist-XXXXXX)
DPID=
trap '[ -n "$DPID" ] && kill $DPID 2>/dev/null; wait 2>/dev/null || true; rm -rf "$TMP"' EXIT
start() {
  : >"$TMP/out"
  build/memattnd --listen 127.0.0.1:0 --data "$TMP/data" --max-body 67108864 >"$TMP/out" 2>>"$TMP/err" &
  DPID=$!
  for _ in $(seq 300); do grep -q '^listening on' "$TMP/out" 2>/dev/null && break; sleep 0.1; done
  ADDR=$(sed -n 's/^listening on //p' "$TMP/out")
}
start
python3 - "$ADDR" "$PUTS" "$DPID" <<'PY'
import http.client, json, sys, time
addr, puts, pid = sys.argv[1], int(sys.argv[2]), sys.argv[3]
host, port = addr.rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port))
def hwm():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
def call(method, path, body=None, want=(200, 201, 204)):
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    if r.status not in want:
        sys.exit(f"{method} {path} -> {r.status} {data[:200]!r}")
    return data
print(f"slot PUT latency against slot history (H=1, d=64), {puts} PUTs per point, release build")
print("| versions in the history | p50 | p90 | p99 | max | ratio of p50 to 0 | daemon VmHWM |")
print("|---|---|---|---|---|---|---|")
base = None
for hist in (0, 5000, 20000, 50000):
    sid = f"h{hist}"
    call("PUT", f"/v1/sessions/{sid}", {"dim": 64, "heads": 1, "slots": 64})
    done = 0
    while done < hist:
        n = min(5000, hist - done)
        call("POST", f"/v1/sessions/{sid}/events",
             {"events": [{"text": f"fact {done + i}", "payload": f"v{done + i}", "slot": "h"} for i in range(n)]})
        done += n
    t = []
    for i in range(puts):
        t0 = time.perf_counter()
        call("PUT", f"/v1/sessions/{sid}/slots/p", {"payload": f"value {i}"})
        t.append((time.perf_counter() - t0) * 1000)
    t.sort()
    q = lambda f: t[min(len(t) - 1, int(len(t) * f))]
    med = t[len(t) // 2]
    base = base or med
    print(f"| {hist:,} | {med:.2f} ms | {q(0.9):.2f} ms | {q(0.99):.2f} ms | {t[-1]:.2f} ms | {med / base:.2f} | {hwm():.0f} MiB |")
PY
kill -TERM "$DPID"; wait "$DPID" || true
start
python3 - "$ADDR" "$DPID" <<'PY'
import http.client, sys, time
addr, pid = sys.argv[1], sys.argv[2]
host, port = addr.rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port))
def hwm():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
base = hwm()
t0 = time.perf_counter()
c.request("GET", "/v1/sessions/h50000/slots/h?version=1")
r = c.getresponse(); r.read()
t1 = time.perf_counter()
c.request("GET", "/v1/sessions/h50000/slots/h?version=25000")
r2 = c.getresponse(); r2.read()
t2 = time.perf_counter()
assert r.status == 200 and r2.status == 200, (r.status, r2.status)
print(f"after a restart: first GET of the 50k session (loads it) {(t1 - t0) * 1000:.0f} ms, the next old-version "
      f"GET {(t2 - t1) * 1000:.2f} ms; daemon VmHWM {base:.0f} MiB before, {hwm():.0f} MiB after")
PY
