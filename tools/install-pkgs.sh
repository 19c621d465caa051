#!/usr/bin/env bash
# tools/install-pkgs.sh PKG... — installs the Debian packages among PKG that are missing (apt-get, as
# root); as another user, prints the apt-get line to run and exits 1. A package counts as present when
# dpkg has it installed; nodejs and npm also when their command is on PATH (a machine may carry Node.js
# from another Debian-format source whose nodejs conflicts with Debian's npm: installing npm there fails
# with "held broken packages"). Used by the Makefile's deps-* targets.
set -u
missing=""
for p in "$@"; do
  case "$p" in nodejs|npm) command -v "$p" >/dev/null 2>&1 && continue ;; esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "  DEPS   $missing"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
  echo "missing Debian packages:$missing"
  echo "run: sudo apt-get update && sudo apt-get install -y$missing"
  exit 1
fi
