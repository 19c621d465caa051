#!/usr/bin/env bash
# tests/contract.sh — docs/openapi.yaml against strict tools and the live daemon: Redocly lint (0 errors,
# 0 warnings with redocly.yaml), Ajv 8 compile of every schema and example, and every documented example
# through Prism's validating proxy in front of $MEMATTN_BIN (tools/contract/contract.mjs).
#
# The tools are the pinned npm packages of tools/contract (make contract-deps). Without them the check
# is skipped with a note (exit 0), so `make check` works before `make contract-deps`; `make test`
# installs them first.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${MEMATTN_BIN:-build/memattnd}
if [ ! -x tools/contract/node_modules/.bin/prism ] || [ ! -x tools/contract/node_modules/.bin/redocly ] || \
   ! command -v node >/dev/null 2>&1; then
  echo "skip contract check: run 'make contract-deps' (Debian nodejs + npm, then npm ci in tools/contract)"
  exit 0
fi
exec node tools/contract/contract.mjs "$BIN"
