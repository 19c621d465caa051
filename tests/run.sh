#!/usr/bin/env bash
# Runs each test binary given, keeps going past failures, and sums cmocka's per-test counts into one
# closing line "tests: N passed, N failed". Exit status 1 if any binary failed (or crashed).
# Each binary's output goes to the terminal; a crashed binary counts as one failed test.
set -u
passed=0 failed=0 bad=()
for t in "$@"; do
  echo "=== $t"
  out=$(mktemp)
  "$t" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  p=$(sed -n 's/^\[  PASSED  \] \([0-9]\+\) test.*/\1/p' "$out" | awk '{s+=$1} END {print s+0}')
  f=$(sed -n 's/^\[  FAILED  \] \([0-9]\+\) test.*/\1/p' "$out" | awk '{s+=$1} END {print s+0}')
  rm -f "$out"
  passed=$((passed + p)); failed=$((failed + f))
  if [ "$rc" -ne 0 ]; then
    bad+=("$t (exit $rc)")
    [ "$f" -eq 0 ] && failed=$((failed + 1))
  fi
done
echo
if [ ${#bad[@]} -gt 0 ]; then printf 'failed: %s\n' "${bad[@]}"; fi
echo "tests: $passed passed, $failed failed"
[ ${#bad[@]} -eq 0 ]
