#!/usr/bin/env bash
# tests/fuzz/run.sh SECONDS TARGET... — runs each libFuzzer target of build/fuzz (make fuzz / fuzz-smoke):
# first every committed regression input of tests/fuzz/regress/TARGET/ once (a crash found once stays a
# test), then fuzzing for SECONDS from the generated seeds (build/fuzz/seeds, gen_seeds), the committed
# ones (tests/fuzz/seeds/TARGET: blobs in the legacy formats the core still reads) and the corpus
# kept between runs (build/fuzz/corpus/TARGET, where new inputs go), with tests/fuzz/TARGET.dict.
# Crashes, leaks, UBSan reports and timeouts (20 s per input) fail the run; the reproducer is written to
# build/fuzz/artifacts/. Prints one line per target: executions, exec/s, coverage (libFuzzer's cov:
# and ft:), corpus size. Full logs: build/fuzz/TARGET.log.
set -u
cd "$(dirname "$0")/../.."
secs=$1
shift
B=build/fuzz/tests/fuzz
mkdir -p build/fuzz/corpus build/fuzz/artifacts
rm -rf build/fuzz/seeds
"$B/gen_seeds" build/fuzz/seeds >/dev/null || { echo "fuzz: gen_seeds failed" >&2; exit 1; }
bad=()
printf '%-18s %12s %10s %8s %8s %8s  %s\n' target execs exec/s cov ft corpus result
for t in "$@"; do
  case $t in
    fuzz_store) max_len=65536 ;;
    fuzz_http|fuzz_body) max_len=8192 ;;
    *) max_len=16384 ;;
  esac
  log=build/fuzz/$t.log
  reg=tests/fuzz/regress/$t
  regs=()
  if [ -d "$reg" ]; then
    mapfile -t regs < <(find "$reg" -type f | sort)
  fi
  if [ ${#regs[@]} -gt 0 ] && ! "$B/$t" "${regs[@]}" >"$log.regress" 2>&1; then
    echo "$t: a regression input fails again:"; tail -40 "$log.regress"
    bad+=("$t (regression)")
    continue
  fi
  corpus=build/fuzz/corpus/$t
  mkdir -p "$corpus"
  dirs=("$corpus" "build/fuzz/seeds/$t")
  [ -d "tests/fuzz/seeds/$t" ] && dirs+=("tests/fuzz/seeds/$t")   # committed seeds (legacy blob formats)
  [ -d "$reg" ] && dirs+=("$reg")
  dict=()
  [ -f "tests/fuzz/$t.dict" ] && dict=("-dict=tests/fuzz/$t.dict")
  "$B/$t" -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -max_len="$max_len" -print_final_stats=1 \
    -artifact_prefix="build/fuzz/artifacts/$t-" "${dict[@]}" "${dirs[@]}" >"$log" 2>&1
  rc=$?
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  files=$(find "$corpus" -type f | wc -l)
  result=ok
  if [ $rc -ne 0 ]; then
    result="FAILED (exit $rc)"
    bad+=("$t")
    grep -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|SUMMARY|Test unit written' "$log" | head -8
  fi
  printf '%-18s %12s %10s %8s %8s %8s  %s\n' "$t" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "$files" "$result"
done
if [ ${#bad[@]} -gt 0 ]; then
  printf 'fuzz: failed: %s\n' "${bad[*]}"
  exit 1
fi
echo "fuzz: ${#@} targets, ${secs} s each: no crash"
