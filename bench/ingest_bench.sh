#!/usr/bin/env bash
# bench/ingest_bench.sh — durable HTTP ingest against the in-process core, in one run
# (docs/RESULTS.md, "HTTP ingest close to the core").
#
#   bench/ingest_bench.sh [BATCHES]      (default 256 batches of 1,024 events per HTTP point)
#
# 1. In-process baselines (build/bench/api_inproc, one thread, BATCHES x 1024 events into one session):
#    core = ma_session_ingest alone; durable = ma_session_ingest + reg_commit after every batch.
# 2. Durable HTTP ingest (build/bench/ingest_http): BATCHES base64 batches of 1,024 events (H = 1,
#    d = 64) over keep-alive connections, a fresh daemon (release build, default threads, --max-body 64M,
#    fresh --data) per point: 1 connection on 1 session; 4 connections on 1 session; 8 connections on
#    1 session; 4 connections on 4 sessions. Per point: events/s, request latency p50/p99/max, the
#    daemon's peak RSS (VmHWM) and the ratios to the in-process rates.
# DAEMON=path runs another build of the daemon (e.g. main's, for a before/after in one sitting); the
# in-process baselines always come from this tree.
set -euo pipefail
cd "$(dirname "$0")/.."
BATCHES=${1:-256}
make -s build/memattnd build/bench/api_inproc build/bench/ingest_http >/dev/null
DAEMON=${DAEMON:-build/memattnd}
TMP=$(mktemp -d /tmp/memattn-ingestbench-XXXXXX)
DPID=
trap '[ -n "$DPID" ] && kill $DPID 2>/dev/null; wait 2>/dev/null || true; rm -rf "$TMP"' EXIT

echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg); daemon: $DAEMON"
echo "== in-process baselines ($BATCHES batches of 1024)"
build/bench/api_inproc "$TMP/inproc" $((BATCHES * 1024)) 1024 | tee "$TMP/inproc.txt"
core=$(sed -n "s/^inproc core batch=1024 .*events_per_s=\([0-9]*\)/\1/p" "$TMP/inproc.txt")
dur=$(sed -n "s/^inproc durable batch=1024 .*events_per_s=\([0-9]*\)/\1/p" "$TMP/inproc.txt")

printf "| sessions | connections | events/s | p50 ms | p99 ms | max ms | VmHWM MiB | vs core | vs durable |\n" >"$TMP/table.md"
printf "|---|---|---|---|---|---|---|---|---|\n" >>"$TMP/table.md"
point() {   # SESSIONS CONNECTIONS
  rm -rf "$TMP/data"
  "$DAEMON" --listen 127.0.0.1:0 --data "$TMP/data" --max-body 64M --log-level warn >"$TMP/out" 2>"$TMP/err" &
  DPID=$!
  for _ in $(seq 100); do grep -q '^listening on' "$TMP/out" 2>/dev/null && break; sleep 0.1; done
  local addr line hwm
  addr=$(sed -n 's/^listening on //p' "$TMP/out")
  line=$(build/bench/ingest_http "$addr" "$1" "$2" "$BATCHES")
  echo "$line"
  hwm=$(awk '/^VmHWM/ {print $2}' /proc/$DPID/status)
  kill -TERM $DPID; wait $DPID || true; DPID=
  python3 - "$line" "$hwm" "$core" "$dur" >>"$TMP/table.md" <<'PY'
import sys
kv = dict(x.split("=") for x in sys.argv[1].split()[1:])
hwm, core, dur = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
ev = float(kv["events_per_s"])
print(f"| {kv['sessions']} | {kv['connections']} | {ev:,.0f} | {kv['p50_ms']} | {kv['p99_ms']} | {kv['max_ms']} "
      f"| {hwm / 1024:.0f} | {ev / core:.2f} | {ev / dur:.2f} |")
PY
}
echo
echo "== durable HTTP ingest, $BATCHES base64 batches of 1024 per point"
point 1 1
point 1 4
point 1 8
point 4 4
echo
echo "in-process: core $core events/s, durable $dur events/s (durable/core $(python3 -c "print('%.2f' % ($dur/$core))"))"
cat "$TMP/table.md"
echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg)"
