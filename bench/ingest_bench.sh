#!/usr/bin/env bash
# bench/ingest_bench.sh — durable HTTP ingest against the in-process core, in one run
# (docs/RESULTS.md, "HTTP ingest close to the core").
#
#   bench/ingest_bench.sh [BATCHES [ROUNDS]]   (default 256 batches of 1,024 events per HTTP point, 2 rounds)
#
# 1. In-process baselines (build/bench/api_inproc, one thread, BATCHES x 1024 events into one session),
#    with the bytes the durable path writes an event and the disk's own rate for that pattern (the bound
#    any store of that write volume reaches here),
#    measured at the start and again at the end of the run: core = ma_session_ingest alone (a managed
#    session: no index builds, as the daemon's request path); core with builds = the same on a session of
#    the core alone, which builds its index inline at every build point; durable =
#    ma_session_ingest + reg_commit after every batch (sqlite synchronous=FULL, as the daemon). The
#    ratios use the higher of the two measurements of each (the machine is shared: the less disturbed
#    one; it makes the HTTP ratios conservative).
# 2. Durable HTTP ingest (build/bench/ingest_http): BATCHES batches of 1,024 events (H = 1, d = 64) over
#    keep-alive connections, a fresh daemon (release build, default threads, --max-body 64M, fresh --data)
#    per point: 1 connection on 1 session; 4 connections on 1 session; 8 connections on 1 session;
#    4 connections on 4 sessions; each point with JSON base64 bodies (b64) and, for this tree's daemon,
#    binary bodies (application/octet-stream, docs/API.md "Binary event batches"; ENCODINGS="b64" skips
#    them). Per point: events/s, request latency p50/p99/max, the daemon's peak RSS (VmHWM), the mean
#    batches per commit transaction (/metrics), the daemon's CPU time (user + system, /proc/PID/stat) per
#    batch, the client's CPU seconds, and the ratios to the in-process rates. Each point runs ROUNDS
#    times; the table shows the round with the median rate (with 2 rounds: the lower one).
# BEFORE=path/to/memattnd (e.g. main's build) runs every point with that daemon too, alternating with this
# tree's, so a before/after comparison shares the machine's mood. DAEMON=path replaces this tree's daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
BATCHES=${1:-256}
ROUNDS=${2:-2}
make -s build/memattnd build/bench/api_inproc build/bench/ingest_http >/dev/null
DAEMON=${DAEMON:-build/memattnd}
BEFORE=${BEFORE:-}
ENCODINGS=${ENCODINGS:-b64 binary}
TICK=$(getconf CLK_TCK)
TMP=$(mktemp -d /tmp/memattn-ingestbench-XXXXXX)
DPID=
trap '[ -n "$DPID" ] && kill $DPID 2>/dev/null; wait 2>/dev/null || true; rm -rf "$TMP"' EXIT

echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg); daemon: $DAEMON${BEFORE:+; before: $BEFORE}"
inproc() {
  rm -rf "$TMP/inproc"
  build/bench/api_inproc "$TMP/inproc" $((BATCHES * 1024)) 1024 | tee -a "$TMP/inproc.txt"
}
echo "== in-process baselines ($BATCHES batches of 1024)"
inproc

point() {   # LABEL DAEMON SESSIONS CONNECTIONS ENCODING -> appends "LABEL line hwm group cpu" to points.txt
  rm -rf "$TMP/data"
  "$2" --listen 127.0.0.1:0 --data "$TMP/data" --max-body 64M --log-level warn >"$TMP/out" 2>"$TMP/err" &
  DPID=$!
  for _ in $(seq 300); do grep -q '^listening on' "$TMP/out" 2>/dev/null && break; sleep 0.1; done
  local addr line hwm
  addr=$(sed -n 's/^listening on //p' "$TMP/out")
  if ! line=$(build/bench/ingest_http "$addr" "$3" "$4" "$BATCHES" 1024 "$5"); then
    echo "point $1 $3 $4 $5 failed (daemon at '$addr'); its log:" >&2
    cat "$TMP/err" >&2
    exit 1
  fi
  hwm=$(awk '/^VmHWM/ {print $2}' /proc/$DPID/status)
  cpu=$(awk -v t="$TICK" -v n="$BATCHES" '{printf "%.2f", ($14 + $15) / t * 1000 / n}' /proc/$DPID/stat)
  # batches per group transaction (a daemon without group commit has no such metric: 1)
  grp=$(curl -s "http://$addr/metrics" | awk '/^memattn_store_group_commits_total / {g=$2}
        /^memattn_store_group_commit_batches_total / {b=$2} END {printf "%.2f", (g > 0) ? b / g : 1}')
  kill -TERM $DPID; wait $DPID || true; DPID=
  echo "$1 $line vmhwm_kib=$hwm group=$grp cpu_ms_per_batch=$cpu" | tee -a "$TMP/points.txt"
}
echo
echo "== durable HTTP ingest, $BATCHES batches of 1024 per point ($ENCODINGS), $ROUNDS rounds"
for round in $(seq "$ROUNDS"); do
  for sc in "1 1" "1 4" "1 8" "4 4"; do
    set -- $sc
    [ -n "$BEFORE" ] && point before "$BEFORE" "$1" "$2" b64
    for enc in $ENCODINGS; do point after "$DAEMON" "$1" "$2" "$enc"; done
  done
done
echo
echo "== in-process baselines again"
inproc
echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 - "$TMP/inproc.txt" "$TMP/points.txt" <<'PY'
import sys, statistics
runs = {"core": [], "core_built": [], "durable": []}
wpe, disk = [], []
for l in open(sys.argv[1]):
    kv = dict(x.split("=") for x in l.split()[2:])
    if l.split()[1] == "disk":
        disk.append(float(kv["bytes_per_s"]))
        continue
    runs[l.split()[1]].append(float(kv["events_per_s"]))
    if "write_bytes_per_event" in kv:
        wpe.append(float(kv["write_bytes_per_event"]))
core, built, dur = runs["core"], runs["core_built"], runs["durable"]
c, cb, d = max(core), max(built), max(dur)
fmt = lambda xs: ", ".join(format(x, ",.0f") for x in xs)
print(f"in-process core {fmt(core)} events/s (no index builds); core with its builds inline {fmt(built)}; "
      f"durable {fmt(dur)}; ratios use core {c:,.0f}, core with builds {cb:,.0f}, durable {d:,.0f} "
      f"(durable/core {d / c:.2f})")
bound = None
if wpe and disk:
    # The disk's bound on any durable rate with the same bytes an event (bench/api_inproc.c, "disk").
    w, dk = statistics.median(wpe), max(disk)
    print(f"durable path writes {fmt(wpe)} bytes an event to storage (payload {2 * 64 * 4}); the data "
          f"directory takes {fmt(x / 1e6 for x in disk)} MB/s of fdatasync'd batch appends: bound "
          f"{dk / w:,.0f} events/s = {dk / w / c:.2f} of the core (durable reaches {d / (dk / w):.2f} of it)")
    bound = dk / w
pts = {}
for l in open(sys.argv[2]):
    f = l.split()
    kv = dict(x.split("=") for x in f[2:])
    pts.setdefault((f[0], kv["encoding"], kv["sessions"], kv["connections"]), []).append(kv)
print()
print("| daemon | encoding | sessions | connections | events/s | p50 ms | p99 ms | max ms | VmHWM MiB | batches per commit | daemon CPU ms per batch | client CPU s | vs core | vs core with builds | vs durable | vs disk bound | rounds (events/s) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for (lab, enc, s, cn), runs in sorted(pts.items(), key=lambda x: (int(x[0][2]), int(x[0][3]), x[0][0] != "before", x[0][1])):
    runs.sort(key=lambda kv: float(kv["events_per_s"]))
    m = runs[(len(runs) - 1) // 2]
    ev = float(m["events_per_s"])
    print(f"| {lab} | {enc} | {s} | {cn} | {ev:,.0f} | {m['p50_ms']} | {m['p99_ms']} | {m['max_ms']} | "
          f"{int(m['vmhwm_kib']) / 1024:.0f} | {m['group']} | {m['cpu_ms_per_batch']} | {m['client_cpu_s']} | "
          f"{ev / c:.2f} | {ev / cb:.2f} | {ev / d:.2f} | {(format(ev / bound, '.2f') if bound else '-')} | " + ", ".join(format(float(r["events_per_s"]), ",.0f") for r in runs) + " |")
PY
