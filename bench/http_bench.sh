#!/usr/bin/env bash
# bench/http_bench.sh — memattnd's GET /healthz against nginx serving the same 15-byte JSON, with wrk
# on loopback, at 1, 64 and 256 connections, both measured in the same run, alternating per point.
#
#   bench/http_bench.sh [SECONDS_PER_RUN (default 5)] [CONNECTIONS... (default 1 64 256)]
#   ROUNDS=3 (default): each point is measured ROUNDS times, alternating memattnd and nginx, and the
#   median of each is reported, so a burst of load from other processes hits both alike.
#
# Prints one table row per point: requests/s and p99 latency of each server (medians), and the
# ratio memattn/nginx of the median requests/s. Both servers get one event loop (memattnd's loop thread; nginx one
# worker process) and log no per-request line. Uses build/memattnd (built by `make` if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${ROUNDS:-3}
shift || true
conns=("$@")
[ ${#conns[@]} -eq 0 ] && conns=(1 64 256)

command -v wrk >/dev/null || { echo "wrk missing: run make deps" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx missing: run make deps (nginx-light)" >&2; exit 1; }
[ -x build/memattnd ] || make -s build

dir=$(mktemp -d /tmp/memattn-bench-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

# memattnd on a free port; its first stdout line names it.
build/memattnd --listen 127.0.0.1:0 --data "$dir/data" --log-level warn --threads 1 \
  --max-connections 4096 >"$dir/memattnd.out" 2>"$dir/memattnd.err" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$dir/memattnd.out" 2>/dev/null && break; sleep 0.05; done
mport=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$dir/memattnd.out")
[ -n "$mport" ] || { echo "memattnd did not start" >&2; cat "$dir/memattnd.err" >&2; exit 1; }

# nginx on a port found free by binding it briefly.
nport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -e "s|@PORT@|$nport|g" -e "s|@DIR@|$dir|g" bench/nginx.conf.in >"$dir/nginx.conf"
nginx -c "$dir/nginx.conf" -e "$dir/nginx-error.log" &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$nport/healthz" >/dev/null 2>&1 && break; sleep 0.05; done

mbody=$(curl -fs "http://127.0.0.1:$mport/healthz"); nbody=$(curl -fs "http://127.0.0.1:$nport/healthz")
[ "$mbody" = "$nbody" ] || { echo "bodies differ: '$mbody' vs '$nbody'" >&2; exit 1; }

# wrk prints "Requests/sec: N" and, with --latency, a "99% X" line (us, ms or s).
measure() {  # url conns -> "rps p99_ms"
  local out
  out=$(wrk -t1 -c"$2" -d"${secs}s" --latency "$1")
  local rps p99
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}' <<<"$out")
  echo "$rps $p99"
}

median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }

echo "memattnd $(build/memattnd --version | cut -d' ' -f2) vs $(nginx -v 2>&1 | cut -d' ' -f3), wrk -t1 -d${secs}s x $rounds rounds, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| connections | memattnd req/s | memattnd p99 ms | nginx req/s | nginx p99 ms | req/s ratio |\n'
printf '|---:|---:|---:|---:|---:|---:|\n'
for c in "${conns[@]}"; do
  mrs=() mps=() nrs=() nps=()
  for _ in $(seq "$rounds"); do
    read -r r p < <(measure "http://127.0.0.1:$mport/healthz" "$c"); mrs+=("$r"); mps+=("$p")
    read -r r p < <(measure "http://127.0.0.1:$nport/healthz" "$c"); nrs+=("$r"); nps+=("$p")
  done
  mr=$(printf '%s\n' "${mrs[@]}" | median); mp=$(printf '%s\n' "${mps[@]}" | median)
  nr=$(printf '%s\n' "${nrs[@]}" | median); np=$(printf '%s\n' "${nps[@]}" | median)
  ratio=$(awk -v a="$mr" -v b="$nr" 'BEGIN { printf "%.2f", a / b }')
  printf '| %d | %.0f | %.3f | %.0f | %.3f | %s |\n' "$c" "$mr" "$mp" "$nr" "$np" "$ratio"
done
