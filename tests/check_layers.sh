#!/usr/bin/env bash
# tests/check_layers.sh — which directory of the daemon may include which headers (`make check-layers`,
# run by `make check` and so by `make test`). docs/ARCHITECTURE.md explains the layers.
#
# Every #include of every .c and .h file under the directories of RULES is checked:
#   - an include in quotes ("dir/file.h", one of ours) must start with one of the rule's `ours` prefixes
#     (a prefix ending in / is a directory, anything else one exact header);
#   - no include (quotes or angle brackets) may start with one of the rule's `never` prefixes.
# A top-level directory holding .c files that has no rule (other than tests/, bench/, build/) fails too,
# so a new layer gets a rule when it is created. A violation prints `file:line: ...` with the rule; the
# exit status is 1 if there was any. Violations listed in PENDING are reported but do not fail: they are
# being removed on another branch; once one is gone the script says so and its line should be deleted.
#
# To change a rule, edit its line: "dir | ours | never | why" (fields separated by |, lists by spaces).
set -u
cd "$(dirname "$0")/.." || exit 2

RULES=(
  "core     | core/                                   | config/ store/ registry/ server/ cjson/ uv.h llhttp.h sqlite3.h | core/ is the model: no I/O libraries, nothing of ours above it"
  "store    | store/ core/error.h core/hash.h         | cjson/ uv.h llhttp.h                                            | store/ sees only core's error codes and hash (row checksums; blobs are opaque bytes); the only user of sqlite3.h"
  "config   | config/ core/                           | sqlite3.h llhttp.h cjson/                                       | config/ knows no store, registry or server"
  "registry | registry/ core/ store/ config/          | sqlite3.h uv.h llhttp.h                                         | registry/ sits between server/ and core/+store/; it does not know the server"
  "server   | server/ registry/ store/ core/ config/  | sqlite3.h                                                       | server/ may use every layer, but reaches sqlite only through store/"
  "clients  | clients/ memattn_client.h              | core/ config/ store/ registry/ server/ sqlite3.h uv.h llhttp.h   | clients/ are libraries for other programs: libcurl and cJSON, nothing of the daemon"
)

# "file:header | branch that removes it" — known violations, fixed on other branches.
PENDING=(
)

trim() { local s="$1"; s="${s#"${s%%[![:space:]]*}"}"; printf '%s' "${s%"${s##*[![:space:]]}"}"; }

starts_with_any() {   # header, prefixes...: true when header matches one prefix (dir/ or exact file)
  local h="$1" p
  shift
  for p in "$@"; do
    if [[ "$p" == */ ]]; then [[ "$h" == "$p"* ]] && return 0
    else [[ "$h" == "$p" || "$h" == "${p%.h}/"* ]] && return 0; fi
  done
  return 1
}

pending_reason() {   # file header -> prints the branch when pending
  local e key
  for e in "${PENDING[@]}"; do
    key=$(trim "${e%%|*}")
    [[ "$key" == "$1:$2" ]] && { trim "${e#*|}"; return 0; }
  done
  return 1
}

fail=0
declare -A ruled seen_pending
for r in "${RULES[@]}"; do
  IFS='|' read -r dir ours never why <<<"$r"
  dir=$(trim "$dir"); why=$(trim "$why")
  read -ra ours <<<"$ours"
  read -ra never <<<"$never"
  ruled[$dir]=1
  [[ -d "$dir" ]] || continue   # a layer that does not exist yet (its rule is ready)
  while IFS= read -r hit; do
    file=${hit%%:*}; rest=${hit#*:}; line=${rest%%:*}; text=${rest#*:}
    if [[ "$text" =~ ^[[:space:]]*#[[:space:]]*include[[:space:]]*([\"\<])([^\"\>]+)[\"\>] ]]; then
      kind=${BASH_REMATCH[1]}; h=${BASH_REMATCH[2]}
    else
      continue
    fi
    if [[ "$kind" == '"' ]]; then shown="\"$h\""; else shown="<$h>"; fi
    bad=""
    if starts_with_any "$h" "${never[@]}"; then
      bad="includes $shown, which $dir/ must never include (never: ${never[*]})"
    elif [[ "$kind" == '"' ]] && ! starts_with_any "$h" "${ours[@]}"; then
      bad="includes $shown, but $dir/ may include only ${ours[*]} of ours"
    fi
    [[ -z "$bad" ]] && continue
    if branch=$(pending_reason "$file" "$h"); then
      seen_pending["$file:$h"]=1
      echo "check-layers: $file:$line: $bad [known; being removed on $branch]"
      continue
    fi
    echo "check-layers: $file:$line: $bad"
    echo "    rule $dir/: $why"
    fail=1
  done < <(grep -n '^[[:space:]]*#[[:space:]]*include' -r --include='*.c' --include='*.h' "$dir" | sort -t: -k1,1 -k2,2n)
done

for d in */; do
  d=${d%/}
  case "$d" in tests|bench|build|docs) continue ;; esac
  [[ -n "${ruled[$d]:-}" ]] && continue
  if compgen -G "$d/*.c" >/dev/null || compgen -G "$d/*.h" >/dev/null; then
    echo "check-layers: $d/ has C sources but no rule in tests/check_layers.sh (RULES)"
    fail=1
  fi
done

for e in "${PENDING[@]}"; do
  key=$(trim "${e%%|*}")
  [[ -n "${seen_pending[$key]:-}" ]] || echo "check-layers: note: $key is no longer included; delete it from PENDING"
done

if [[ $fail -ne 0 ]]; then
  echo "check-layers: FAILED (rules: tests/check_layers.sh, layers: docs/ARCHITECTURE.md)"
  exit 1
fi
echo "check-layers: ok (${#RULES[@]} rules)"
