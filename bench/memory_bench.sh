#!/usr/bin/env bash
# bench/memory_bench.sh — exact reads of a paged session within the memory budget (issue 9 items 3 and 5;
# docs/RESULTS.md, "Reads within the memory budget").
#
#   bench/memory_bench.sh [EVENTS (default 2097152)] [MEMORY (default 128M)] [--compare N]
#
# One release daemon (build/memattnd) with --memory MEMORY gets a session of EVENTS events (H = 1,
# d = d_v = 64, index selector), ingested over HTTP in base64 batches of 4096 (16 distinct batches sent in
# turn: 65,536 distinct keys). Then 1,000 queries: 936 sparse ones in requests of 8 (the latency of each
# request: p50 / p99 / max) and one request of 64 `route: full` queries (its time), with the daemon's
# VmHWM reset (/proc/PID/clear_refs) before the queries and read after them, against VmRSS before.
# --compare N: then build/bench/bench_persist --events EVENTS --compare N (a fresh core + store process:
# paged against resident sparse reads, p50 / p99 and their ratio in one run).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2097152}
MEM=${2:-128M}
CMP=0
[ "${3:-}" = "--compare" ] && CMP=${4:-1000}
make -s build/memattnd build/bench/bench_persist >/dev/null
TMP=$(mktemp -d /tmp/memattn-mem-XXXXXX)
pid=
trap '[ -n "$pid" ] && { kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; }; rm -rf "$TMP"' EXIT

build/memattnd --listen 127.0.0.1:0 --data "$TMP/data" --memory "$MEM" --max-body 64M --log-level warn \
  --threads 2 >"$TMP/out" 2>"$TMP/err" &
pid=$!
for _ in $(seq 200); do grep -q '^listening on' "$TMP/out" 2>/dev/null && break; sleep 0.05; done
PORT=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$TMP/out")
kib() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$pid/status"; }

t0=$(date +%s.%N)
python3 - "$PORT" "$N" <<'PY'
import base64, http.client, json, random, struct, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection('127.0.0.1', port, timeout=3600)
c.request('PUT', '/v1/sessions/big', '{"dim":64,"value_dim":64}'); r = c.getresponse(); r.read(); assert r.status == 201
rnd = random.Random(1)
B = 4096
bodies = []
for b in range(16):
    evs = []
    for i in range(B):
        k = struct.pack('<64f', *[rnd.gauss(0, 1) for _ in range(64)])
        v = struct.pack('<64f', *[rnd.gauss(0, 1) for _ in range(64)])
        evs.append({'k_b64': base64.b64encode(k).decode(), 'v_b64': base64.b64encode(v).decode()})
    bodies.append(json.dumps({'events': evs}))
done = 0
while done < n:
    m = min(B, n - done)
    body = bodies[(done // B) % 16] if m == B else json.dumps({'events': json.loads(bodies[0])['events'][:m]})
    c.request('POST', '/v1/sessions/big/events', body); r = c.getresponse(); r.read()
    assert r.status == 200, r.status
    done += m
PY
t1=$(date +%s.%N)
hwm_ingest=$(kib VmHWM)
rss0=$(kib VmRSS)
echo 5 >"/proc/$pid/clear_refs"

python3 - "$PORT" "$TMP/q.txt" <<'PY'
import http.client, json, random, sys, time
port, out = int(sys.argv[1]), sys.argv[2]
c = http.client.HTTPConnection('127.0.0.1', port, timeout=3600)
rnd = random.Random(7)
def q(route):
    return {'route': route, 'q': [rnd.gauss(0, 1) for _ in range(64)]}
def call(body):
    t = time.monotonic()
    c.request('POST', '/v1/sessions/big/query', json.dumps(body)); r = c.getresponse(); data = r.read()
    dt = time.monotonic() - t
    assert r.status == 200, (r.status, data[:300])
    res = json.loads(data)['results']
    assert all('error' not in x for x in res), [x for x in res if 'error' in x][:1]
    return dt, res
lat = []
for i in range(117):                       # 936 sparse queries in requests of 8
    dt, res = call({'queries': [q('sparse') for _ in range(8)]})
    assert all(x['route'] == 'sparse' for x in res)
    lat.append(dt)
full_t, res = call({'queries': [q('full') for _ in range(64)]})
assert len(res) == 64 and all(x['route'] == 'full' for x in res)
lat.sort()
pct = lambda p: lat[min(len(lat) - 1, int(p * (len(lat) - 1)))] * 1e3
with open(out, 'w') as f:
    f.write(f"sparse requests of 8 (936 queries): ms p50 {pct(0.5):.1f} p99 {pct(0.99):.1f} max {lat[-1]*1e3:.1f}\n")
    f.write(f"one request of 64 full reads: {full_t:.2f} s ({len(res[0]['chunks'])} chunks each)\n")
PY
hwm_q=$(kib VmHWM)
rss1=$(kib VmRSS)
chunk_loads=$(curl -fs "127.0.0.1:$PORT/metrics" | awk '/^memattn_archive_chunk_loads_total/ {print $2}')
echo "memory_bench: $N events (H = 1, d = d_v = 64, index selector), --memory $MEM, release build"
printf 'ingest: %.1f s over HTTP; daemon VmHWM during ingest %.1f MiB\n' "$(echo "$t1 - $t0" | bc)" \
  "$(echo "$hwm_ingest / 1024" | bc -l)"
cat "$TMP/q.txt"
printf 'daemon memory: VmRSS before the queries %.1f MiB, VmHWM during the 1,000 queries %.1f MiB (reset before), VmRSS after %.1f MiB; archive in full %.1f MiB; chunks paged in %s\n' \
  "$(echo "$rss0 / 1024" | bc -l)" "$(echo "$hwm_q / 1024" | bc -l)" "$(echo "$rss1 / 1024" | bc -l)" \
  "$(echo "$N * 512 / 1048576" | bc -l)" "${chunk_loads:-?}"
kill $pid; wait $pid 2>/dev/null || true; pid=
if [ "$CMP" -gt 0 ]; then
  build/bench/bench_persist --events "$N" --queries 100 --compare "$CMP" --dir "$TMP/persist"
fi
