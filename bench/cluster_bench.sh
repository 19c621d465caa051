#!/usr/bin/env bash
# bench/cluster_bench.sh — requests/s through nginx (deploy/memattn-cluster's configuration) with 1, 2
# and 3 daemons, and straight to one daemon, measured in one run (docs/RESULTS.md, "Cluster").
#
#   bench/cluster_bench.sh [SECONDS (default 5)] [CONNECTIONS (default 32)] [ROUNDS (default 3)]
#
# Workload: POST /v1/sessions/{id}/query (one sparse read: a random query vector, base64) cycling over
# 96 sessions of 1024 events each (H = 1, d = 64), every session created on every daemon so that any
# ring finds it. wrk -t1 -c CONNECTIONS; each point ROUNDS times, alternating, medians reported.
# Each daemon runs --threads 2; nginx one worker. On a machine with C cores, N daemons share them:
# the ratios show what adding daemons buys on one machine (on 2 cores: nothing beyond the cores).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
CONNS=${2:-32}
ROUNDS=${3:-3}
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "needs wrk and nginx: make deps" >&2; exit 1; }
make -s build/memattnd >/dev/null
TMP=$(mktemp -d /tmp/memattn-clbench-XXXXXX)
chmod 755 "$TMP"
pids=()
cleanup() {
  [ -f "$TMP/nginx/nginx.pid" ] && kill "$(cat "$TMP/nginx/nginx.pid")" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

ports=()
for i in 1 2 3; do
  mkdir -p "$TMP/n$i"
  build/memattnd --listen 127.0.0.1:0 --data "$TMP/n$i/data" --node-id "n$i" --threads 2 --max-body 64M \
    --log-level warn >"$TMP/n$i/out" 2>"$TMP/n$i/err" &
  pids+=($!)
  for _ in $(seq 100); do grep -q '^listening on' "$TMP/n$i/out" 2>/dev/null && break; sleep 0.05; done
  ports+=("$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$TMP/n$i/out")")
done

python3 - "$TMP" "${ports[@]}" <<'PY'
import base64, http.client, json, math, random, struct, sys
tmp, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
rnd = random.Random(7)
def unit(d):
    x = [rnd.gauss(0, 1) for _ in range(d)]
    n = math.sqrt(sum(a * a for a in x))
    return [a / n for a in x]
def b64(x):
    return base64.b64encode(struct.pack('<%df' % len(x), *x)).decode()
batch = json.dumps({'events': [{'k_b64': b64(unit(64)), 'v_b64': b64(unit(64))} for _ in range(1024)]})
for p in ports:
    c = http.client.HTTPConnection('127.0.0.1', p)
    for i in range(96):
        c.request('PUT', '/v1/sessions/b%02d' % i, '{"dim":64}'); c.getresponse().read()
        c.request('POST', '/v1/sessions/b%02d/events' % i, batch); r = c.getresponse(); r.read()
        assert r.status == 200, r.status
q = json.dumps({'queries': [{'q_b64': b64(unit(64))}]})
open(tmp + '/query.lua', 'w').write('''
local n = 0
local body = '%s'
request = function()
  n = n + 1
  return wrk.format("POST", string.format("/v1/sessions/b%%02d/query", n %% 96), {["Content-Type"]="application/json"}, body)
end
''' % q)
PY

mkdir -p "$TMP/nginx"
chmod 777 "$TMP/nginx"
nport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
conf() {  # N: nginx over the first N daemons
  : >"$TMP/nodes"
  for i in $(seq "$1"); do echo "n$i 127.0.0.1:${ports[$((i-1))]}" >>"$TMP/nodes"; done
  deploy/memattn-cluster nginx-conf "$TMP/nodes" --listen "127.0.0.1:$nport" --standalone "$TMP/nginx" >"$TMP/nginx/nginx.conf"
}
conf 1
nginx -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" &
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$nport/healthz" >/dev/null 2>&1 && break; sleep 0.05; done

measure() {  # URL -> requests/s
  wrk -t1 -c"$CONNS" -d"${SECS}s" -s "$TMP/query.lua" "$1" | awk '/^Requests\/sec:/ {print $2}'
}
median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }

echo "cluster bench: $(nproc) cores, wrk -t1 -c$CONNS -d${SECS}s x $ROUNDS rounds, load average $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A res
for r in $(seq "$ROUNDS"); do
  res[direct]+="$(measure "http://127.0.0.1:${ports[0]}") "
  for n in 1 2 3; do
    conf "$n"
    nginx -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" -s reload
    sleep 0.5
    res[$n]+="$(measure "http://127.0.0.1:$nport") "
  done
done
d=$(tr ' ' '\n' <<<"${res[direct]}" | grep . | median)
printf '| setup | requests/s (median) | ratio to one daemon direct |\n|---|---:|---:|\n'
printf '| one daemon, direct | %.0f | 1.00 |\n' "$d"
for n in 1 2 3; do
  m=$(tr ' ' '\n' <<<"${res[$n]}" | grep . | median)
  printf '| nginx + %d daemon(s) | %.0f | %.2f |\n' "$n" "$m" "$(awk -v a="$m" -v b="$d" 'BEGIN {print a / b}')"
done
