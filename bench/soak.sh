#!/usr/bin/env bash
# bench/soak.sh — a bounded soak of the release daemon on loopback (docs/RESULTS.md, "Soak").
#
#   bench/soak.sh [SECONDS] [CONNECTIONS] [SESSIONS]     (defaults 60, 256, 8; needs wrk and curl)
#
# Starts build/memattnd on 127.0.0.1:0 with a fresh --data directory, creates SESSIONS sessions, then
# runs wrk with CONNECTIONS keep-alive connections for SECONDS (bench/soak.lua: 60 % queries, 15 % slot
# reads, 15 % event batches, 10 % slot overwrites) while sampling the daemon's VmRSS and VmHWM from
# /proc/PID/status once a second. Then: the answers by status class, latency, the RSS samples (first,
# median, last, max), /healthz, and a clean SIGTERM exit. Exit status non-zero on any 5xx, a daemon
# that died, or an unclean stop. Traffic goes to 127.0.0.1 only; wrk stops after SECONDS, and the
# whole run is bounded by `timeout` (SECONDS + 120 s).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
CONNS=${2:-256}
SESSIONS=${3:-8}
make -s build/memattnd >/dev/null
TMP=$(mktemp -d /tmp/memattn-soak-XXXXXX)
DPID=""
SPID=""
cleanup() {
  [ -n "$SPID" ] && kill "$SPID" 2>/dev/null || true
  [ -n "$DPID" ] && kill "$DPID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

build/memattnd --listen 127.0.0.1:0 --data "$TMP/data" --log-level warn --max-connections 1024 \
  >"$TMP/out" 2>"$TMP/err" &
DPID=$!
for _ in $(seq 100); do grep -q '^listening on' "$TMP/out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(sed -n 's/^listening on //p' "$TMP/out")
[ -n "$ADDR" ] || { echo "soak: the daemon did not start"; cat "$TMP/err"; exit 1; }
URL="http://$ADDR"
case "$ADDR" in 127.0.0.1:*) ;; *) echo "soak: refusing a non-loopback address $ADDR"; exit 1 ;; esac
for i in $(seq 0 $((SESSIONS - 1))); do
  curl -sf -X PUT "$URL/v1/sessions/soak$i" -d '{"dim":16,"slots":16,"chunk":64}' >/dev/null
done

# RSS sampler: one line "seconds VmRSS_kB VmHWM_kB" per second while the daemon lives.
(
  t=0
  while kill -0 "$DPID" 2>/dev/null && [ $t -le $((SECS + 60)) ]; do
    awk -v t=$t '/^VmRSS/ {r=$2} /^VmHWM/ {h=$2} END {print t, r, h}' "/proc/$DPID/status" 2>/dev/null || true
    sleep 1
    t=$((t + 1))
  done
) >"$TMP/rss" &
SPID=$!

echo "== soak: $CONNS connections, $SECS s, $SESSIONS sessions, $URL"
timeout $((SECS + 120)) wrk -t2 -c"$CONNS" -d"${SECS}s" --timeout 10s -s bench/soak.lua "$URL" -- "$SESSIONS" \
  | tee "$TMP/wrk"
kill "$SPID" 2>/dev/null || true
wait "$SPID" 2>/dev/null || true
SPID=""

kill -0 "$DPID" 2>/dev/null || { echo "soak: the daemon died"; tail -20 "$TMP/err"; exit 1; }
curl -sf "$URL/healthz" >/dev/null || { echo "soak: /healthz failed after the run"; exit 1; }
echo "== daemon memory (kB), sampled once a second from /proc/$DPID/status"
sort -n -k1 "$TMP/rss" | awk '{r[NR]=$2; h=$3} END {
  n=NR; if (n == 0) { print "no samples"; exit }
  split("", s); for (i=1;i<=n;i++) s[i]=r[i]
  for (i=1;i<=n;i++) for (j=i+1;j<=n;j++) if (s[j]<s[i]) { x=s[i]; s[i]=s[j]; s[j]=x }
  printf "samples %d  VmRSS first %d  median %d  last %d  max %d  VmHWM %d\n", n, r[1], s[int((n+1)/2)], r[n], s[n], h }'
grep -E 'Requests/sec|Non-2xx' "$TMP/wrk" || true
curl -s "$URL/v1/sessions?limit=1000" | grep -o '"length":[0-9]*' | awk -F: '{s+=$2} END {print "events stored:", s+0}'
kill -TERM "$DPID"
rc=0
wait "$DPID" || rc=$?
DPID=""
echo "daemon exit status after SIGTERM: $rc"
[ "$rc" -eq 0 ] || exit 1
if grep -q 'soak: .* [1-9][0-9]* 5xx' "$TMP/wrk"; then echo "soak: 5xx answers"; exit 1; fi
echo "soak: ok"
