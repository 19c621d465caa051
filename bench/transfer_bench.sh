#!/usr/bin/env bash
# bench/transfer_bench.sh — export and import of one large session between two daemons (docs/RESULTS.md,
# "Cluster"): times, the snapshot's size against the store's bytes for the session, and the daemons'
# peak RSS while doing it (bounded: the session is never held in memory for the transfer).
#
#   bench/transfer_bench.sh [EVENTS (default 2097152)]
#
# Daemon A gets a session of EVENTS events (H = 1, d = d_v = 64, a JSON payload on every 16th event),
# ingested over HTTP in base64 batches of 4096. Then: curl GET .../export -o FILE (timed), a second
# daemon B, curl -T FILE PUT .../import (timed; -T streams the file), and the answers of both to the
# same queries on every route must be identical. Peak RSS is VmHWM from /proc before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2097152}
make -s build/memattnd >/dev/null
TMP=$(mktemp -d /tmp/memattn-xfer-XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null || true; wait $p 2>/dev/null || true; done; rm -rf "$TMP"' EXIT

start() {  # name -> port
  build/memattnd --listen 127.0.0.1:0 --data "$TMP/$1" --max-body 64M --log-level warn --threads 2 \
    >"$TMP/$1.out" 2>"$TMP/$1.err" &
  pids+=($!)
  echo $! >"$TMP/$1.pid"
  for _ in $(seq 200); do grep -q '^listening on' "$TMP/$1.out" 2>/dev/null && break; sleep 0.05; done
  sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$TMP/$1.out"
}
hwm() { awk '/^VmHWM/ {printf "%.1f", $2/1024}' "/proc/$(cat "$TMP/$1.pid")/status"; }
rss() { awk '/^VmRSS/ {printf "%.1f", $2/1024}' "/proc/$(cat "$TMP/$1.pid")/status"; }

A=$(start a)
t0=$(date +%s.%N)
python3 - "$A" "$N" <<'PY'
import base64, http.client, json, random, struct, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection('127.0.0.1', port, timeout=600)
c.request('PUT', '/v1/sessions/big', '{"dim":64}'); r = c.getresponse(); r.read(); assert r.status == 201
rnd = random.Random(1)
B = 4096
bodies = []
for b in range(4):   # four distinct batches, sent in turn (the bits need not differ for this measure)
    evs = []
    for i in range(B):
        k = struct.pack('<64f', *[rnd.gauss(0, 1) for _ in range(64)])
        v = struct.pack('<64f', *[rnd.gauss(0, 1) for _ in range(64)])
        e = {'k_b64': base64.b64encode(k).decode(), 'v_b64': base64.b64encode(v).decode()}
        if i % 16 == 0:
            e['payload'] = {'batch': b, 'i': i}
        evs.append(e)
    bodies.append(json.dumps({'events': evs}))
done = 0
while done < n:
    m = min(B, n - done)
    body = bodies[(done // B) % 4] if m == B else json.dumps({'events': json.loads(bodies[0])['events'][:m]})
    c.request('POST', '/v1/sessions/big/events', body); r = c.getresponse(); r.read()
    assert r.status == 200, (r.status, r.read())
    done += m
PY
t1=$(date +%s.%N)
stored=$(curl -fs "127.0.0.1:$A/v1/sessions/big" | python3 -c 'import json,sys; print(json.load(sys.stdin)["stored_bytes"])')
dbbytes=$(du -cb "$TMP/a"/memattn.db* | tail -1 | cut -f1)
hwm_a0=$(hwm a); rss_a0=$(rss a)

t2=$(date +%s.%N)
curl -fs "127.0.0.1:$A/v1/sessions/big/export" -o "$TMP/big.snap"
t3=$(date +%s.%N)
hwm_a1=$(hwm a)
snap=$(stat -c %s "$TMP/big.snap")

B_=$(start b)
hwm_b0=$(hwm b)
t4=$(date +%s.%N)
curl -fs -X PUT -T "$TMP/big.snap" -H 'Content-Type: application/octet-stream' "127.0.0.1:$B_/v1/sessions/big/import" >"$TMP/import.json"
t5=$(date +%s.%N)
hwm_b1=$(hwm b)

q='{"queries":[{"q":[1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1],"route":"sparse"},{"q":[0,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1],"route":"window"},{"q":[0,0,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1],"route":"state"}]}'
qa=$(curl -fs "127.0.0.1:$A/v1/sessions/big/query" -d "$q")
qb=$(curl -fs "127.0.0.1:$B_/v1/sessions/big/query" -d "$q")
same=no; [ "$qa" = "$qb" ] && same=yes

awk -v n="$N" -v ing="$(echo "$t1 - $t0" | bc)" -v ex="$(echo "$t3 - $t2" | bc)" -v im="$(echo "$t5 - $t4" | bc)" \
    -v snap="$snap" -v stored="$stored" -v db="$dbbytes" -v ha0="$hwm_a0" -v ha1="$hwm_a1" -v ra0="$rss_a0" \
    -v hb0="$hwm_b0" -v hb1="$hwm_b1" -v same="$same" 'BEGIN {
  printf "transfer bench: %d events (H = 1, d = d_v = 64), %d cores, load average %s\n", n, 2, "'"$(cut -d' ' -f1-3 /proc/loadavg)"'"
  printf "| what | result |\n|---|---|\n"
  printf "| ingest over HTTP (base64, batches of 4096) | %.1f s, %.0f events/s |\n", ing, n / ing
  printf "| store bytes of the session (stored_bytes) / database files | %.1f MiB / %.1f MiB |\n", stored / 1048576, db / 1048576
  printf "| snapshot size | %.1f MiB, %.3f of stored_bytes, %.1f bytes per event |\n", snap / 1048576, snap / stored, snap / n
  printf "| export (GET, to a file) | %.2f s, %.0f events/s, %.0f MiB/s |\n", ex, n / ex, snap / 1048576 / ex
  printf "| import (PUT, from the file, one transaction) | %.2f s, %.0f events/s, %.0f MiB/s |\n", im, n / im, snap / 1048576 / im
  printf "| daemon A peak RSS: after ingest / after export | %s / %s MiB (RSS before the export %s MiB) |\n", ha0, ha1, ra0
  printf "| daemon B peak RSS: empty / after import | %s / %s MiB |\n", hb0, hb1
  printf "| answers of A and B to sparse, window, state queries identical | %s |\n", same
}'
cat "$TMP/import.json"; echo
