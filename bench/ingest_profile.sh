#!/usr/bin/env bash
# bench/ingest_profile.sh — where the daemon's CPU goes per event batch under durable HTTP ingest
# (docs/RESULTS.md, "HTTP ingest close to the core").
#
#   bench/ingest_profile.sh [DAEMON [ENCODING [CONNECTIONS [BATCHES]]]]
#     (default build/memattnd, b64, 8 connections on one session, 256 batches of 1,024 events)
#
# Starts DAEMON on a fresh data directory (--max-body 64M), attaches `perf record --call-graph
# dwarf,16384 -F 499` to it, runs build/bench/ingest_http (ENCODING b64 or binary), then prints the
# daemon's CPU time per batch (user + system, /proc/PID/stat), the client's, and a table: for each part
# of the path the share of the daemon's samples that fall inside it (perf report --children) and that
# share of the CPU per batch in ms. Parts overlap where one calls the other (indented rows are inside
# the row above; page faults are counted inside whichever function touched the page). Needs perf.
set -euo pipefail
cd "$(dirname "$0")/.."
DAEMON=${1:-build/memattnd}
ENC=${2:-b64}
CONNS=${3:-8}
BATCHES=${4:-256}
make -s build/bench/ingest_http >/dev/null
TMP=$(mktemp -d /tmp/memattn-ingestprof-XXXXXX)
DPID= PPID_=
trap '[ -n "$PPID_" ] && kill -INT $PPID_ 2>/dev/null; [ -n "$DPID" ] && kill $DPID 2>/dev/null; wait 2>/dev/null || true; rm -rf "$TMP"' EXIT
"$DAEMON" --listen 127.0.0.1:0 --data "$TMP/data" --max-body 64M --log-level warn >"$TMP/out" 2>"$TMP/err" &
DPID=$!
for _ in $(seq 300); do grep -q '^listening on' "$TMP/out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$TMP/out")
perf record --call-graph dwarf,16384 -F 499 -o "$TMP/perf.data" -p "$DPID" >/dev/null 2>&1 &
PPID_=$!
sleep 0.5
line=$(build/bench/ingest_http "$addr" 1 "$CONNS" "$BATCHES" 1024 "$ENC")
ticks=$(awk '{print $14 + $15}' /proc/$DPID/stat)
kill -INT $PPID_; wait $PPID_ 2>/dev/null || true; PPID_=
kill -TERM $DPID; wait $DPID || true; DPID=
echo "$line"
echo "daemon: $DAEMON; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
perf report -i "$TMP/perf.data" --children --sort sym --stdio -g none 2>/dev/null >"$TMP/report.txt"
python3 - "$TMP/report.txt" "$ticks" "$(getconf CLK_TCK)" "$BATCHES" <<'PY'
import re, sys
report, ticks, hz, batches = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
ms = ticks / hz * 1000 / batches
ch = {}
for l in open(report):
    m = re.match(r"\s+([\d.]+)%\s+([\d.]+)%\s+\[[.k]\]\s+(.*?)\s*(\(inlined\))?$", l)
    if m and m.group(3) not in ch:
        ch[m.group(3)] = float(m.group(1))
g = lambda *names: sum(ch.get(n, 0.0) for n in names)
rows = [
    ("prepare step (events_decode: parse + decode)", g("events_decode")),
    ("  cJSON parse + jsontext check (codec_parse_body)", g("codec_parse_body")),
    ("  batch decode from the tree (codec_events_decode)", g("codec_events_decode")),
    ("  raw decode (codec_events_decode_simple, _binary)", g("codec_events_decode_simple", "codec_events_decode_binary")),
    ("  base64 (codec_b64_decode)", g("codec_b64_decode")),
    ("  path texts (snprintf)", g("__GI___snprintf", "__snprintf")),
    ("apply in the session's turn (events_run)", g("events_run")),
    ("  core ingest (ma_session_ingest_ex)", g("ma_session_ingest_ex")),
    ("commit thread (committer_main)", g("committer_main")),
    ("  WAL checkpoint (sqlite3WalCheckpoint)", g("sqlite3WalCheckpoint")),
    ("  fdatasync (CPU in the call)", g("__GI_fdatasync", "fdatasync")),
    ("index builds (maint_main)", g("maint_main")),
    ("event loop (uv_run: recv, llhttp, body copy, answers)", g("uv_run")),
    ("page faults (asm_exc_page_fault, any thread)", g("asm_exc_page_fault")),
]
print(f"daemon CPU {ms:.2f} ms per batch")
print("| part | share of the daemon's samples | ms per batch |")
print("|---|---|---|")
for name, p in rows:
    print(f"| {name} | {p:.1f} % | {p / 100 * ms:.2f} |")
PY
