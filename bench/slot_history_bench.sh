#!/usr/bin/env bash
# bench/slot_history_bench.sh — what one slot PUT costs through REST as the slot history grows
# (docs/RESULTS.md, "Slot PUT latency against history"; issue 9 item 1).
#
#   bench/slot_history_bench.sh [PUTS]      (default 40 PUTs per point; needs python3)
#
# One session (H = 1, d = 64, M = 64) per point; its history is built with events carrying a write
# signal for one slot name (batches of 5,000 `text` events, each a new version of slot `h`), so a point
# of 50,000 versions takes 10 requests; then PUTS overwrites of another slot through
# PUT /v1/sessions/{id}/slots/{name}, one at a time on one keep-alive connection: median and p90 in ms.
# The daemon is build/memattnd (release build) with a fresh --data directory and --max-body 64M, so
# every PUT commits with synchronous=FULL (docs/STORE.md). The ratio 50k/0 is the figure of the issue.
set -euo pipefail
cd "$(dirname "$0")/.."
PUTS=${1:-40}
make -s build/memattnd >/dev/null
TMP=$(mktemp -d /tmp/memattn-slothist-XXXXXX)
DPID=
trap '[ -n "$DPID" ] && kill $DPID 2>/dev/null; wait 2>/dev/null || true; rm -rf "$TMP"' EXIT
build/memattnd --listen 127.0.0.1:0 --data "$TMP/data" --max-body 67108864 >"$TMP/out" 2>"$TMP/err" &
DPID=$!
for _ in $(seq 100); do grep -q '^listening on' "$TMP/out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(sed -n 's/^listening on //p' "$TMP/out")
python3 - "$ADDR" "$PUTS" <<'PY'
import http.client, json, sys, time
addr, puts = sys.argv[1], int(sys.argv[2])
host, port = addr.rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port))
def call(method, path, body=None, want=(200, 201, 204)):
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    if r.status not in want:
        sys.exit(f"{method} {path} -> {r.status} {data[:200]!r}")
    return data
print(f"slot PUT latency against slot history (H=1, d=64), {puts} PUTs per point, release build")
print("| versions in the history | median | p90 | ratio to 0 |")
print("|---|---|---|---|")
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
    med, p90 = t[len(t) // 2], t[int(len(t) * 0.9)]
    base = base or med
    print(f"| {hist:,} | {med:.2f} ms | {p90:.2f} ms | {med / base:.1f} |")
PY
