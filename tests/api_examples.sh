#!/usr/bin/env bash
# tests/api_examples.sh — runs every curl example of docs/API.md against a live daemon and checks the
# answers.
#
# Usage: MEMATTN_BIN=build/memattnd tests/api_examples.sh [FILE [SECTION]]
#   FILE defaults to docs/API.md; SECTION limits the examples to the `## SECTION` part of FILE
#   (README.md "Quick start").
#
# The daemon ($MEMATTN_BIN, default build/memattnd) is started on 127.0.0.1:0 with a fresh --data
# directory, and stopped with SIGTERM at the end (it must exit 0). Every line of a ```sh block that
# starts with `curl ` is an example; the next line must be `# -> STATUS [BODY]`:
#   BODY absent        the answer has no body (204)
#   BODY = text WORDS  the answer's body contains WORDS
#   BODY = JSON        an abridged answer: every field shown must be present with that value, other
#                      fields may be present; "..." matches any value; an array ending in "..." may
#                      have more elements; numbers compare exactly.
# `localhost:8080` is replaced by the daemon's address and /tmp/memattn-backup.db by a temporary path.
# Examples run in document order (later ones build on earlier ones). Exit status 0 when all passed.
set -euo pipefail
cd "$(dirname "$0")/.."
DOC=${1:-docs/API.md}
SECTION=${2:-}
BIN=${MEMATTN_BIN:-build/memattnd}
exec python3 - "$DOC" "$BIN" "$SECTION" <<'PY'
import json, os, re, shutil, signal, subprocess, sys, tempfile

doc, binary, section = sys.argv[1], sys.argv[2], sys.argv[3]

def examples(path):
    """(line number, command, status, kind, expected) for every curl line of ```sh blocks."""
    out, in_sh, in_section = [], False, not section
    lines = open(path, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if section and line.startswith("## ") and not in_sh:
            in_section = line[3:].strip() == section
        if not in_section:
            i += 1
            continue
        if line.startswith("```"):
            in_sh = line.strip() == "```sh"
            i += 1
            continue
        if in_sh and line.startswith("curl "):
            start = i + 1
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1] + " " + lines[i].strip()
            exp = lines[i + 1] if i + 1 < len(lines) else ""
            m = re.match(r"^# -> (\d{3})(?: (.*))?$", exp)
            if not m:
                sys.exit(f"{path}:{start}: curl example without a '# -> STATUS [BODY]' line after it")
            body = m.group(2)
            if body is None:
                kind, want = "empty", None
            elif body.startswith("text "):
                kind, want = "text", body[5:]
            else:
                kind = "json"
                try:
                    want = json.loads(body)
                except ValueError as e:
                    sys.exit(f"{path}:{i + 2}: expected answer is not JSON: {e}")
            out.append((start, line, int(m.group(1)), kind, want))
            i += 2
            continue
        i += 1
    return out

def match(want, got, where="body"):
    """None when got matches the abridged want, else a message."""
    if want == "...":
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"{where}: expected an object, got {json.dumps(got)[:80]}"
        for k, v in want.items():
            if k not in got:
                return f"{where}.{k}: missing"
            r = match(v, got[k], f"{where}.{k}")
            if r:
                return r
        return None
    if isinstance(want, list):
        if not isinstance(got, list):
            return f"{where}: expected an array, got {json.dumps(got)[:80]}"
        open_end = bool(want) and want[-1] == "..."
        items = want[:-1] if open_end else want
        if len(got) < len(items) or (not open_end and len(got) != len(items)):
            return f"{where}: expected {len(items)}{'+' if open_end else ''} elements, got {len(got)}: {json.dumps(got)[:200]}"
        for n, v in enumerate(items):
            r = match(v, got[n], f"{where}[{n}]")
            if r:
                return r
        return None
    if type(want) != type(got) and not (isinstance(want, (int, float)) and isinstance(got, (int, float))
                                        and not isinstance(want, bool) and not isinstance(got, bool)):
        return f"{where}: expected {json.dumps(want)}, got {json.dumps(got)[:120]}"
    if want != got:
        return f"{where}: expected {json.dumps(want)}, got {json.dumps(got)[:120]}"
    return None

exs = examples(doc)
if not exs:
    sys.exit(f"{doc}: no curl examples found" + (f" in section {section!r}" if section else ""))

tmp = tempfile.mkdtemp(prefix="memattn-examples-")
backup = os.path.join(tmp, "backup.db")
daemon = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--data", os.path.join(tmp, "data")],
                          stdout=subprocess.PIPE, stderr=open(os.path.join(tmp, "daemon.log"), "w"), text=True)
first = daemon.stdout.readline().strip()
m = re.match(r"^listening on (\S+)$", first)
if not m:
    daemon.kill()
    sys.exit(f"daemon did not start: first line {first!r}; log in {tmp}/daemon.log")
addr = m.group(1)

passed = failed = 0
bodyfile = os.path.join(tmp, "body")
for lineno, cmd, status, kind, want in exs:
    run = cmd.replace("localhost:8080", addr).replace("/tmp/memattn-backup.db", backup)
    run += f" -o {bodyfile} -w '%{{http_code}}'"
    p = subprocess.run(["bash", "-c", run], capture_output=True, text=True, timeout=60)
    got_status = int(p.stdout.strip() or 0)
    body = open(bodyfile, encoding="utf-8").read() if os.path.exists(bodyfile) else ""
    body = body.replace(backup, "/tmp/memattn-backup.db")   # the answer as the reader would see it
    if os.path.exists(bodyfile):
        os.unlink(bodyfile)
    err = None
    if got_status != status:
        err = f"status {got_status}, expected {status}"
    elif kind == "empty" and body:
        err = f"expected no body, got {body[:120]!r}"
    elif kind == "text" and want not in body:
        err = f"body lacks {want!r}"
    elif kind == "json":
        try:
            err = match(want, json.loads(body))
        except ValueError:
            err = f"body is not JSON: {body[:120]!r}"
    if err:
        failed += 1
        print(f"FAIL {doc}:{lineno}: {cmd}\n     {err}\n     body: {body[:400]}")
    else:
        passed += 1
        print(f"ok   {doc}:{lineno}: {cmd[:100]}")

# docs/openapi.yaml against the implementation: the same (method, path) set as the route tables of
# server/api.c and server/api_transfer.c, and every documented operation reaches a handler on the live
# daemon (no router 404/405).
spec = open("docs/openapi.yaml", encoding="utf-8").read()
documented, path = set(), None
for line in spec.split("\n"):
    m = re.match(r"^  (/\S*):\s*$", line)
    if m:
        path = m.group(1)
        continue
    m = re.match(r"^    (get|put|post|patch|delete|head|options):\s*$", line)
    if m and path:
        documented.add((m.group(1).upper(), path))
    if re.match(r"^\S", line):
        path = None
try:   # full OpenAPI 3 validation when the validator is installed (pip openapi-spec-validator)
    import yaml
    from openapi_spec_validator import validate as validate_spec
    validate_spec(yaml.safe_load(spec))
    passed += 1
    print("ok   docs/openapi.yaml is a valid OpenAPI 3 document")
except ImportError:
    print("skip docs/openapi.yaml validation (python3 yaml / openapi-spec-validator not installed)")
except Exception as e:
    failed += 1
    print(f"FAIL docs/openapi.yaml: {str(e)[:300]}")
code = open("server/api.c", encoding="utf-8").read() + open("server/api_transfer.c", encoding="utf-8").read()
implemented = set(re.findall(r'\{"(GET|PUT|POST|PATCH|DELETE)", "(/v1/[^"]*)", h_\w+\}', code))
implemented |= {("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/v1/info")}   # served by server/
for op in sorted(documented ^ implemented):
    failed += 1
    print(f"FAIL openapi: {op[0]} {op[1]} is {'documented but not implemented' if op in documented else 'implemented but not in docs/openapi.yaml'}")
for method, path in sorted(documented):
    url = "http://" + addr + path.replace("{id}", "openapi-probe").replace("{name}", "probe")
    p = subprocess.run(["curl", "-s", "-X", method, "-o", bodyfile, "-w", "%{http_code}", url, "-d", "{}"]
                       if method != "GET" else ["curl", "-s", "-o", bodyfile, "-w", "%{http_code}", url],
                       capture_output=True, text=True, timeout=60)
    body = open(bodyfile, encoding="utf-8").read() if os.path.exists(bodyfile) else ""
    if p.stdout == "405" or (p.stdout == "404" and '"not_found"' in body and "/query" not in path):
        failed += 1
        print(f"FAIL openapi: {method} {path} answered {p.stdout} by the router: {body[:200]}")
    else:
        passed += 1

daemon.send_signal(signal.SIGTERM)
try:
    rc = daemon.wait(timeout=30)
except subprocess.TimeoutExpired:
    daemon.kill()
    rc = "timeout"
if rc != 0:
    failed += 1
    print(f"FAIL daemon exit status {rc} after SIGTERM (expected 0); log in {tmp}/daemon.log")
else:
    shutil.rmtree(tmp, ignore_errors=True)
print(f"api examples: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
