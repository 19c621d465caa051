#!/usr/bin/env bash
# bench/stream_bench.sh — streaming ingest into one `index` session over REST, and the restart after it
# (docs/RESULTS.md, "Index builds in the background"; issue 9).
#
#   bench/stream_bench.sh [EVENTS (default 2097152)] [MEMORY (default 134217728)] [DAEMON (default build/memattnd)]
#
# One daemon (release build, --threads 2, --memory MEMORY) gets a session (H = 1, d = d_v = 64, selector
# index) and EVENTS events in batches of 1,024 base64 events over one keep-alive connection, every batch
# acknowledged only once durable (bench/stream_client.c prints p50 / p99 / max per batch and the ratios).
# VmHWM of the daemon is read from /proc after the stream and once its background index build is done.
# The daemon is then stopped (SIGTERM) and started again on the same data directory; "restart" is the
# time from the spawn to the answer of one sparse query, split into the store's open (until the daemon
# listens) and the first answer (which loads the session). The answers of a batch of 8 sparse queries
# before and after the restart are printed and compared.
# Then, for a daemon that has --store-check, REPS (default 3) more restarts with each of
# `--store-check open` (the integrity check before listening) and `background` (beside serving), alternated,
# each timed the same way; the medians and their ratio are printed (docs/STORE.md, "Integrity").
# DAEMON lets the same script measure another build (e.g. main's, built elsewhere) with the same client.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2097152}
MEM=${2:-134217728}
BIN=${3:-build/memattnd}
make -s build/bench/stream_client >/dev/null
[ "$BIN" != build/memattnd ] || make -s build/memattnd >/dev/null
TMP=$(mktemp -d /tmp/memattn-stream-XXXXXX)
pid=
# KEEP_DATA=1 keeps the data directory (its path is printed) for a look with sqlite3 or another restart.
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; while [ -n "$pid" ] && kill -0 $pid 2>/dev/null; do sleep 0.05; done; if [ -n "${KEEP_DATA:-}" ]; then echo "data kept in $TMP/data"; else rm -rf "$TMP"; fi' EXIT

start() {  # [EXTRA ARGS...] -> port; sets pid
  "$BIN" --listen 127.0.0.1:0 --data "$TMP/data" --max-body 64M --log-level warn --threads 2 --memory "$MEM" "$@" \
    >"$TMP/out" 2>"$TMP/err" &
  echo $! >"$TMP/pid"
  for _ in $(seq 6000); do grep -q '^listening on' "$TMP/out" 2>/dev/null && break; sleep 0.01; done
  sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$TMP/out"
}
hwm() { awk '/^VmHWM/ {printf "%.1f", $2/1024}' "/proc/$pid/status"; }
rss() { awk '/^VmRSS/ {printf "%.1f", $2/1024}' "/proc/$pid/status"; }

echo "== $N events, --memory $MEM, $BIN"
P=$(start); pid=$(cat "$TMP/pid")
# Every 0.2 s: the daemon's VmRSS and the registry's count (memattn_session_memory_bytes), so that what the
# process holds beyond what the budget counts can be read over the run (the overhead's peak, below).
( while kill -0 $pid 2>/dev/null; do
    r=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null) || break
    c=$(curl -fs "127.0.0.1:$P/metrics" 2>/dev/null | awk '/^memattn_session_memory_bytes / {print $2}')
    echo "$(date +%s.%N) ${r:-0} ${c:-0}"; sleep 0.2
  done ) >"$TMP/samples" &
sampler=$!
build/bench/stream_client stream "$P" s "$N" 1024 1
echo "daemon after the stream: VmRSS $(rss) MiB, VmHWM $(hwm) MiB"
# Let a background build that is still running finish before the answers are taken (the main build has none).
for _ in $(seq 3600); do
  b=$(curl -fs "127.0.0.1:$P/v1/sessions/s" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("index",{}).get("building",False))')
  [ "$b" = True ] || break; sleep 0.5
done
echo "daemon VmHWM $(hwm) MiB (after any build finished)"
# The registry's count (what the budget holds) and the builds, beside or in place.
curl -fs "127.0.0.1:$P/metrics" | awk '/^memattn_session_memory_bytes / {c=$2} /^memattn_index_builds_total / {b=$2}
  /^memattn_index_builds_in_place_total / {p=$2} END {printf "registry count %.1f MiB; index builds %d (%d in place)\n", c/1048576, b, p}'
build/bench/stream_client query "$P" s "$N" 8 1 >"$TMP/before"
kill $sampler 2>/dev/null || true; wait $sampler 2>/dev/null || true
awk '{c = $3 / 1048576; r = $2 / 1024; if (c > mc) mc = c; if (r > mr) {mr = r; rc = c}
      if (c >= pc && r - c > mo) {mo = r - c; orr = r; oc = c}; pc = c}
     END {f = "sampled every 0.2 s: registry count at most %.1f MiB; VmRSS at most %.1f MiB (count then %.1f); VmRSS beyond the count at most %.1f MiB (VmRSS %.1f, count %.1f; samples where the count had just dropped left out)\n"
          printf f, mc, mr, rc, mo, orr, oc}' "$TMP/samples"
head -1 "$TMP/before"
kill -TERM $pid; while kill -0 $pid 2>/dev/null; do sleep 0.05; done; pid=

t0=$(date +%s.%N)
P=$(start); pid=$(cat "$TMP/pid")
t1=$(date +%s.%N)
build/bench/stream_client query "$P" s "$N" 1 1 | head -1   # the first answer: loads the session
t2=$(date +%s.%N)
build/bench/stream_client query "$P" s "$N" 8 1 >"$TMP/after"
head -1 "$TMP/after"
echo "restart: spawn to listening $(echo "$t1 - $t0" | bc) s (store open), first answer (session load + 1 query) $(echo "$t2 - $t1" | bc) s, total $(echo "$t2 - $t0" | bc) s; VmHWM $(hwm) MiB"
if cmp -s <(tail -n +2 "$TMP/before") <(tail -n +2 "$TMP/after"); then
  echo "answers after the restart: identical to before"
else
  echo "answers after the restart: DIFFERENT"; exit 1
fi

"$BIN" --help | grep -q -- --store-check || exit 0
REPS=${REPS:-3}
kill -TERM $pid; while kill -0 $pid 2>/dev/null; do sleep 0.05; done; pid=
for r in $(seq "$REPS"); do
  for mode in open background; do
    t0=$(date +%s.%N)
    P=$(start --store-check $mode); pid=$(cat "$TMP/pid")
    t1=$(date +%s.%N)
    build/bench/stream_client query "$P" s "$N" 1 1 >/dev/null
    t2=$(date +%s.%N)
    echo "restart --store-check $mode: listening $(echo "$t1 - $t0" | bc) s, first answer $(echo "$t2 - $t1" | bc) s, total $(echo "$t2 - $t0" | bc) s" | tee -a "$TMP/restarts"
    kill -TERM $pid; while kill -0 $pid 2>/dev/null; do sleep 0.05; done; pid=
  done
done
python3 - "$TMP/restarts" <<'PY'
import statistics, sys
t = {}
for l in open(sys.argv[1]):
    f = l.split()
    t.setdefault(f[2].rstrip(":"), []).append((float(f[4]), float(f[11])))
med = {m: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for m, v in t.items()}
for m, (lis, tot) in med.items():
    print(f"restart medians --store-check {m}: listening {lis:.3f} s, spawn to first answer {tot:.3f} s ({len(t[m])} restarts)")
print(f"spawn to first answer, open / background: {med['open'][1] / med['background'][1]:.2f}")
PY
