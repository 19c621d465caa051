#!/usr/bin/env bash
# bench/api_bench.sh — the REST API under wrk on loopback (docs/RESULTS.md, "REST API").
#
#   bench/api_bench.sh [SECONDS]      (default 5 s per wrk point; needs wrk, curl, python3)
#
# 1. In-process baselines (build/bench/api_inproc): ma_session_ingest alone, and with the store commit.
# 2. Ingest through HTTP: POST /v1/sessions/{id}/events with batches of 1, 64, 1024 events (H = 1,
#    d = 64), JSON arrays against base64, one fresh session per point, 4 connections; events/s =
#    requests/s x batch, and its ratio to the in-process rates.
#    And the same work as the in-process runs (65,536 events in 64 base64 batches of 1024, sequential on
#    one keep-alive connection), against the in-process rates.
# 3. Queries: a session of 65,536 events (loaded in base64 batches of 1024), POST .../query with one
#    random query (auto route: no slots, so a sparse read) at 1 and 16 connections: requests/s, p50, p99.
# The daemon is build/memattnd (release build) with a fresh --data directory and --max-body 64M.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
make -s build/memattnd build/bench/api_inproc >/dev/null
TMP=$(mktemp -d /tmp/memattn-apibench-XXXXXX)
trap 'kill $DPID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$TMP"' EXIT

echo "== in-process baselines"
build/bench/api_inproc "$TMP/inproc" 65536 | tee "$TMP/inproc.txt"

python3 - "$TMP" <<'PY'
import base64, json, random, struct, sys, math
tmp = sys.argv[1]
rnd = random.Random(7)
def unit(d):
    x = [rnd.gauss(0, 1) for _ in range(d)]
    n = math.sqrt(sum(a * a for a in x))
    return [a / n for a in x]
def b64(x):
    return base64.b64encode(struct.pack("<%df" % len(x), *x)).decode()
for n in (1, 64, 1024):
    evs = [(unit(64), unit(64)) for _ in range(n)]
    json.dump({"events": [{"k": [float("%.9g" % a) for a in k], "v": [float("%.9g" % a) for a in v]} for k, v in evs]},
              open(f"{tmp}/events_json_{n}.json", "w"), separators=(",", ":"))
    json.dump({"events": [{"k_b64": b64(k), "v_b64": b64(v)} for k, v in evs]},
              open(f"{tmp}/events_b64_{n}.json", "w"), separators=(",", ":"))
for i in range(64):
    json.dump({"events": [{"k_b64": b64(unit(64)), "v_b64": b64(unit(64))} for _ in range(1024)]},
              open(f"{tmp}/load_{i}.json", "w"), separators=(",", ":"))
json.dump({"queries": [{"q_b64": b64(unit(64))}]}, open(f"{tmp}/query.json", "w"))
PY

build/memattnd --listen 127.0.0.1:0 --data "$TMP/data" --max-body 64M --log-level warn >"$TMP/out" 2>"$TMP/err" &
DPID=$!
for _ in $(seq 100); do grep -q '^listening on' "$TMP/out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(sed -n 's/^listening on //p' "$TMP/out")
URL=http://$ADDR

# wrk_point NAME CONNECTIONS PATH BODYFILE -> "rps p50_ms p99_ms"
wrk_point() {
  local out
  out=$(wrk -t1 -c"$2" -d"${SECS}s" --latency -s bench/api_post.lua "$URL$3" -- "$4" 2>"$TMP/wrk.err")
  if ! grep -q '^non200 0$' <<<"$out"; then echo "wrk run $1 had failed requests:" >&2; cat "$TMP/wrk.err" >&2; exit 1; fi
  python3 - "$out" <<'PY'
import re, sys
o = sys.argv[1]
def ms(s):
    v, u = re.match(r"([\d.]+)(us|ms|s)", s).groups()
    return float(v) * {"us": 1e-3, "ms": 1, "s": 1e3}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", o).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", o, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", o, re.M).group(1))
print(f"{rps:.1f} {p50:.3f} {p99:.3f}")
PY
}

echo
echo "== ingest through HTTP (4 connections, ${SECS}s per point)"
printf "| batch | encoding | requests/s | events/s | p50 ms | p99 ms | vs in-process core | vs in-process durable |\n|---|---|---|---|---|---|---|---|\n" >"$TMP/ingest.md"
for n in 1 64 1024; do
  core=$(sed -n "s/^inproc core batch=$n .*events_per_s=\([0-9]*\).*/\1/p" "$TMP/inproc.txt")
  dur=$(sed -n "s/^inproc durable batch=$n .*events_per_s=\([0-9]*\).*/\1/p" "$TMP/inproc.txt")
  for enc in json b64; do
    sid=ingest-$enc-$n
    curl -sf -X PUT "$URL/v1/sessions/$sid" -d '{"dim":64}' >/dev/null
    read -r rps p50 p99 < <(wrk_point "$sid" 4 "/v1/sessions/$sid/events" "$TMP/events_${enc}_$n.json")
    python3 -c "
rps,n,core,dur=$rps,$n,$core,$dur
ev=rps*n
print(f'| {n} | $enc | {rps:.0f} | {ev:.0f} | $p50 | $p99 | {ev/core:.2f} | {ev/dur:.2f} |')" >>"$TMP/ingest.md"
    curl -sf -X DELETE "$URL/v1/sessions/$sid" >/dev/null
  done
done
cat "$TMP/ingest.md"

echo
echo "== the same work as the in-process runs: 65,536 events in 64 base64 batches of 1024, one connection"
curl -sf -X PUT "$URL/v1/sessions/seq" -d '{"dim":64}' >/dev/null
args=()
for i in $(seq 0 63); do args+=(--next -sf -o /dev/null --data-binary @"$TMP/load_$i.json" "$URL/v1/sessions/seq/events"); done
t0=$(date +%s.%N)
curl "${args[@]:1}"
t1=$(date +%s.%N)
core=$(sed -n "s/^inproc core batch=1024 .*events_per_s=\([0-9]*\).*/\1/p" "$TMP/inproc.txt")
dur=$(sed -n "s/^inproc durable batch=1024 .*events_per_s=\([0-9]*\).*/\1/p" "$TMP/inproc.txt")
python3 -c "
ev=65536/($t1-$t0)
print('| HTTP, 1 connection | %.0f events/s | vs in-process core %.2f | vs in-process durable %.2f |' % (ev, ev/$core, ev/$dur))"
curl -sf -X DELETE "$URL/v1/sessions/seq" >/dev/null

echo
echo "== queries on a 65,536-event session (H = 1, d = 64, auto route -> sparse, ${SECS}s per point)"
curl -sf -X PUT "$URL/v1/sessions/q64k" -d '{"dim":64}' >/dev/null
for i in $(seq 0 63); do curl -sf "$URL/v1/sessions/q64k/events" --data-binary @"$TMP/load_$i.json" -o /dev/null; done
curl -sf "$URL/v1/sessions/q64k/query" --data-binary @"$TMP/query.json" | python3 -c "
import json,sys; r=json.load(sys.stdin)['results'][0]; print('route', r['route'], 'chunks', len(r.get('chunks',[])), 'event', r.get('event'))"
curl -sf "$URL/v1/sessions/q64k" | python3 -c "import json,sys; s=json.load(sys.stdin); print('length', s['length'], 'bytes', s['bytes'], 'stored_bytes', s['stored_bytes'])"
printf "| connections | requests/s | p50 ms | p99 ms |\n|---|---|---|---|\n" >"$TMP/query.md"
for c in 1 16; do
  read -r rps p50 p99 < <(wrk_point "query-$c" "$c" "/v1/sessions/q64k/query" "$TMP/query.json")
  echo "| $c | $rps | $p50 | $p99 |" >>"$TMP/query.md"
done
cat "$TMP/query.md"
kill -TERM $DPID; wait $DPID
