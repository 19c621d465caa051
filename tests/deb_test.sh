#!/usr/bin/env bash
# tests/deb_test.sh — `make deb-test`: the built package installs, its daemon starts as the memattn
# user with the installed configuration, tells systemd it is ready once the store is open, serves,
# stops cleanly; the unit passes `systemd-analyze verify`. CI has no running systemd, so the unit
# is not started: the installed binary is run the way the unit runs it (same user, same config).
#
#   tests/deb_test.sh build/deb/memattnd_VERSION_ARCH.deb
#
# Needs root (dpkg -i). The package is purged at the end, and only if this script installed it.
set -euo pipefail
deb=${1:?usage: tests/deb_test.sh PACKAGE.deb}
if [ "$(id -u)" != 0 ]; then
  echo "deb-test: SKIP: needs root to install $deb (run: sudo make deb-test)"; exit 0
fi
fail() { echo "deb-test: FAILED: $*" >&2; exit 1; }
pass=0; ok() { pass=$((pass + 1)); }

preinstalled=0
dpkg-query -W -f='${Status}' memattnd 2>/dev/null | grep -q 'install ok installed' && preinstalled=1
tmp=$(mktemp -d /tmp/memattn-debtest-XXXXXX)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$tmp"
  if [ "$preinstalled" = 0 ]; then DEBIAN_FRONTEND=noninteractive dpkg --purge memattnd >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# Depends (adduser, the shared libraries) are installed by make deps / the build; dpkg -i refuses
# the package if one is missing, which is what this checks.
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log"; fail "dpkg -i"; }
ok
for f in /usr/sbin/memattnd /etc/memattn/memattn.conf /lib/systemd/system/memattnd.service \
         /usr/share/memattn/deploy/memattn-cluster /usr/share/doc/memattnd/DEPLOY.md; do
  [ -e "$f" ] || fail "$f not installed"; ok
done
getent passwd memattn >/dev/null || fail "user memattn not created"; ok
[ "$(stat -c %U /var/lib/memattn)" = memattn ] || fail "/var/lib/memattn not owned by memattn"; ok
[ "$(stat -c '%U:%G %a' /etc/memattn/memattn.conf)" = "root:memattn 640" ] || fail "config mode $(stat -c '%U:%G %a' /etc/memattn/memattn.conf)"; ok
/usr/sbin/memattnd --version | grep -q '^memattnd ' || fail "--version"; ok

# The unit: offline verification when systemd-analyze exists (install it with: apt-get install systemd).
if command -v systemd-analyze >/dev/null; then
  # verify complains about units the unit refers to that a container lacks; only our unit's own
  # lines are errors here.
  systemd-analyze verify /lib/systemd/system/memattnd.service >"$tmp/verify.log" 2>&1 || true
  if grep -i 'memattnd.service' "$tmp/verify.log" | grep -vi 'not found\|No such file\|Failed to prepare' >/dev/null; then
    cat "$tmp/verify.log"; fail "systemd-analyze verify"
  fi
  ok
  echo "deb-test: systemd-analyze verify: $(grep -c . "$tmp/verify.log" || true) line(s) of output, none about the unit"
else
  echo "deb-test: systemd-analyze not installed: unit not verified"
fi

# Run it as the unit does: user memattn, the installed config; only the port differs (8080 may be
# taken on a CI machine). READY=1 must come after the store is open. setpriv execs the daemon (no
# parent process in between), so signals and the exit status are the daemon's own.
chmod 755 "$tmp"
python3 - "$tmp" <<'PY' || fail "readiness / serving"
import json, os, socket, subprocess, sys, time, urllib.request
tmp = sys.argv[1]
sock = os.path.join(tmp, 'notify')
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sock); os.chmod(sock, 0o777); s.settimeout(30)
env = dict(os.environ, NOTIFY_SOCKET=sock)
p = subprocess.Popen(['setpriv', '--reuid=memattn', '--regid=memattn', '--init-groups', '/usr/sbin/memattnd', '--config', '/etc/memattn/memattn.conf',
                      '--listen', '127.0.0.1:0', '--node-id', 'debtest'], env=env, stdout=subprocess.PIPE, text=True)
try:
    line = p.stdout.readline()
    assert line.startswith('listening on '), line
    port = int(line.rsplit(':', 1)[1])
    assert s.recv(64) == b'READY=1'
    assert os.path.exists('/var/lib/memattn/memattn.db'), 'store not in /var/lib/memattn'
    base = 'http://127.0.0.1:%d' % port
    h = json.load(urllib.request.urlopen(base + '/healthz'))
    assert h == {'status': 'ok', 'node': 'debtest'}, h
    r = urllib.request.Request(base + '/v1/sessions/debtest', data=b'{"dim":8}', method='PUT')
    assert urllib.request.urlopen(r).status in (200, 201)
    st = os.stat('/var/lib/memattn/memattn.db')
    import pwd
    assert pwd.getpwuid(st.st_uid).pw_name == 'memattn', 'store owned by %d' % st.st_uid
    p.terminate()
    assert p.wait(30) == 0, 'exit status'
    assert s.recv(64) == b'STOPPING=1'
    print('deb-test: installed memattnd ran as memattn: READY=1 after the store opened, served, exit 0 on SIGTERM')
finally:
    if p.poll() is None:
        p.kill()
PY
ok
echo "deb-test: $pass checks passed"
