#!/usr/bin/env python3
"""tests/clients/test_python_client.py — clients/python/memattn.py end to end against the real daemon.

Run from the repository root with MEMATTN_BIN set (tests/e2e/test_clients.c does, in `make check`).
Each test_* function gets fresh daemons as it needs; the closing line is "N passed, N failed" and the
exit status is 1 when anything failed.
"""
from __future__ import annotations

import array
import http.client
import http.server
import json
import math
import os
import struct
import sys
import threading
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "clients", "python"))
sys.path.insert(0, os.path.dirname(__file__))

import memattn  # noqa: E402
from daemon import Daemon  # noqa: E402

D = None  # the shared daemon of the tests that need no special options


def expect_error(fn, status, code):
    try:
        fn()
    except memattn.MemattnError as e:
        assert e.status == status and e.code == code, f"expected {status} {code}, got {e}"
        return e
    raise AssertionError(f"expected {status} {code}, got no error")


def test_pack_roundtrip():
    x = [1.0, -2.5, 0.0, 3.25]
    b = memattn.pack_f32(x)
    assert b == "AACAPwAAIMAAAAAAAABQQA==", b
    assert memattn.unpack_f32(b) == x
    # API.md's example: k [0,1,1,0] is "AAAAAAAAgD8AAIA/AAAAAA=="
    assert memattn.pack_f32([0, 1, 1, 0]) == "AAAAAAAAgD8AAIA/AAAAAA=="


def test_sessions():
    c = memattn.Client(D.base)
    assert c.healthz()
    s = c.create_session("py-a", {"dim": 4, "slots": 4})
    assert s.id == "py-a" and s.config["dim"] == 4 and s.config["value_dim"] == 4
    assert c.create_session("py-a", {"dim": 4, "slots": 4}).id == "py-a"   # idempotent PUT
    expect_error(lambda: c.create_session("py-a", {"dim": 8}), 409, "exists")
    expect_error(lambda: c.create_session("py-b", {"heads": 0}), 400, "bad_config")
    anon = c.create_session(config={"dim": 2})
    assert len(anon.id) == 32
    c.create_session("py-c", {"dim": 2})
    ids = [x["id"] for x in c.list_sessions(limit=1)]   # three pages of one
    assert set(ids) >= {"py-a", "py-c", anon.id} and ids == sorted(ids), ids
    info = c.get_session("py-a")
    assert info["length"] == 0 and "backbone" in info
    anon.delete()
    expect_error(lambda: c.get_session(anon.id), 404, "no_session")
    c.delete_session(anon.id, missing_ok=True)
    expect_error(lambda: c.delete_session(anon.id), 404, "no_session")
    c.close()


def test_append_batches_and_query():
    # A client limit of 2 KiB against the daemon's 1 MiB: 300 events of 2x8 floats need many batches.
    c = memattn.Client(D.base, max_body=2048)
    s = c.create_session("py-ev", {"heads": 2, "dim": 4, "value_dim": 2, "slots": 8, "chunk": 16})
    evs = []
    for i in range(300):
        k = [math.sin(i * 0.37 + j * (1 + i % 5)) for j in range(8)]
        for h in (0, 4):   # unit norm per head: each key's best match under attention is itself
            n = math.sqrt(sum(x * x for x in k[h:h + 4]))
            k[h:h + 4] = [x / n for x in k[h:h + 4]]
        ev = {"k": k, "v": [i / 300.0, -1.0, 0.5, float(i % 7)], "payload": {"i": i}}
        if i == 123:
            ev["slot"] = "one_two_three"
        evs.append(ev)
    out = s.append(evs)
    assert out["appended"] == 300 and out["length"] == 300, out
    assert out["batches"] > 10, out
    assert out["writes"] == [{"slot": "one_two_three", "version": 1, "event": 123}], out["writes"]
    assert c.requests_sent >= out["batches"]
    assert s.info()["length"] == 300
    # Query the stored key of event 200 exactly: full attention points at it.
    r = s.query([{"q": evs[200]["k"], "route": "full"}, {"slot": "one_two_three"},
                 {"q": memattn.pack_f32(evs[5]["k"]), "route": "window"}])
    assert [x["route"] for x in r] == ["full", "slot", "window"], r
    assert r[0]["payload"] == {"i": 200} and r[0].ok and r[0].error is None
    assert r[1]["slot"] == "one_two_three" and r[1]["payload"] == {"i": 123}
    assert len(r[1].vector()) == 4
    one = s.query_one(evs[200]["k"], route="full")
    assert one["event"] == 200
    # An event alone over the limit is refused before sending, with how many were appended.
    big = [{"k": [0.0] * 8, "v": [0.0] * 4, "payload": "x" * 3000}]
    e = expect_error(lambda: s.append(evs[:5] + big), 0, "body_too_large")
    assert e.appended == 0
    # A bad event in the second batch: the first batch stays applied, the error tells.
    bad = evs[:40] + [{"k": [1.0, 2.0], "v": [0.0] * 4}]
    e = expect_error(lambda: s.append(bad), 400, "dim_mismatch")
    assert e.appended > 0 and s.info()["length"] == 300 + e.appended, (e.appended, s.info()["length"])
    c.close()


def test_body_limit_from_daemon():
    # Without max_body the client asks GET /v1/info (when it exists), else uses 1 MiB; against a
    # daemon with a 64 KiB limit and no /v1/info, batches are still below 1 MiB: pass it explicitly.
    with Daemon(["--max-body", "65536"]) as d:
        c = memattn.Client(d.base)
        info = c.info()
        lim = c.max_body
        if info is None:
            assert lim == memattn.DEFAULT_MAX_BODY
            c = memattn.Client(d.base, max_body=65536)
        else:
            assert lim == 65536, (lim, info)
        s = c.create_session("big", {"dim": 64})
        evs = [{"k": [float((i * 31 + j) % 17) for j in range(64)], "payload": "p%d" % i} for i in range(2000)]
        out = s.append(evs)
        assert out["appended"] == 2000 and out["batches"] >= 2, out
        c.close()


def test_per_query_error():
    c = memattn.Client(D.base)
    s = c.create_session("py-q", {"dim": 8})
    s.write_slot("capital_of_france", payload="Paris")
    qs = [{"text": "capital of France"}, {"text": "weather in Rome", "route": "slot"}]
    try:
        r = s.query(qs)
    except memattn.MemattnError as e:   # a daemon that fails the whole batch
        assert e.status == 404 and e.code == "no_slot", e
    else:                                # a daemon with per-query errors
        assert r[0].ok and r[0]["payload"] == "Paris"
        assert not r[1].ok and r[1].error.code == "no_slot", r[1]
    # The per-query shape, as the daemon sends it in place of a result:
    res = memattn.Result({"error": {"code": "no_version", "message": "no version 7"}})
    assert not res.ok and res.error.code == "no_version" and res.error.message == "no version 7"
    expect_error(lambda: s.query_one(text="weather in Rome", route="slot"), 404, "no_slot")
    c.close()


def test_slot_verbs():
    c = memattn.Client(D.base)
    s = c.create_session("py-slots", {"dim": 8, "slots": 2})
    assert s.write_slot("capital", payload="Paris") == {"name": "capital", "version": 1, "evicted": []}
    expect_error(lambda: s.write_slot("capital", payload="Lyon"), 409, "exists")
    got = s.slot("capital")
    assert got["etag"] == '"1"' and got["payload"] == "Paris" and got["protected"] is False
    expect_error(lambda: s.put_slot("capital", "Lyon", if_match=7), 412, "precondition_failed")
    assert s.put_slot("capital", "Paris, France", if_match=1)["version"] == 2
    assert s.put_slot("capital", "Paris!", version=10)["version"] == 10
    assert s.slot("capital", version=2)["payload"] == "Paris, France"
    assert s.protect("capital", True)["protected"] is True
    expect_error(lambda: s.put_slot("capital", "Marseille"), 423, "protected")
    expect_error(lambda: s.evict("capital"), 423, "protected")
    s.protect("capital", False)
    s.write_slot("vec", k=[1, 0, 0, 0, 0, 0, 0, 0], v=[0, 1, 0, 0, 0, 0, 0, 0], payload={"n": 1})
    assert [x["name"] for x in s.slots()] == ["capital", "vec"]
    s.evict("vec")
    expect_error(lambda: s.slot("vec"), 404, "no_slot")
    vs = s.versions("vec")
    assert [v["tombstone"] for v in vs] == [False, True], vs
    assert s.restore("vec", 1)["version"] == 3
    back = s.slot("vec")
    assert back["payload"] == {"n": 1} and memattn.unpack_f32(back["v"]) == [0, 1, 0, 0, 0, 0, 0, 0] \
        if isinstance(back.get("v"), str) else back["payload"] == {"n": 1}
    r = s.query_one(q=[1, 0, 0, 0, 0, 0, 0, 0])
    assert r["route"] == "slot" and r["slot"] == "vec" and r["version"] == 3, r
    c.close()


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503 twice, then 201; records each request's Idempotency-Key."""
    keys: list = []
    protocol_version = "HTTP/1.1"

    def do_PUT(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _Flaky.keys.append(self.headers.get("Idempotency-Key"))
        if len(_Flaky.keys) <= 2:
            body, status = b'{"error":{"code":"overloaded","message":"busy"}}', 503
        else:
            body, status = b'{"id":"x","config":{"dim":4}}', 201
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 503:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_retries_and_idempotency_key():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        c = memattn.Client("http://127.0.0.1:%d" % srv.server_address[1], retries=3, backoff=0.001)
        s = c.create_session("x", {"dim": 4})
        assert s.id == "x"
        assert len(_Flaky.keys) == 3 and _Flaky.keys[0] and len(set(_Flaky.keys)) == 1, _Flaky.keys
        # Bounded: 503 forever gives up after 1 + retries requests.
        _Flaky.keys = []
        c2 = memattn.Client("http://127.0.0.1:%d" % srv.server_address[1], retries=1, backoff=0.001)
        expect_error(lambda: c2.create_session("x", {"dim": 4}), 503, "overloaded")
        assert len(_Flaky.keys) == 2
    finally:
        srv.shutdown()
        srv.server_close()
    # A port nobody listens on: connection errors, retried, then raised.
    port = srv.server_address[1]
    c3 = memattn.Client("http://127.0.0.1:%d" % port, retries=2, backoff=0.001)
    expect_error(lambda: c3.get_session("x"), 0, "connection")
    assert c3.requests_sent == 3
    # Mutations against the real daemon carry the header (it must be accepted).
    c4 = memattn.Client(D.base)
    c4.create_session("py-idem", {"dim": 4}).write_slot("a", payload="b")


def test_token():
    with Daemon(["--token", "s3cret"]) as d:
        expect_error(lambda: memattn.Client(d.base).get_session("x"), 401, "unauthorized")
        c = memattn.Client(d.base, token="s3cret")
        s = c.create_session("t", {"dim": 4})
        s.write_slot("a", payload="b")
        assert s.slot("a")["payload"] == "b"


# ---- binary event batches (Session.append_f32) ------------------------------------------------

BH, BD, BV, BN = 2, 4, 2, 300   # the sessions' heads, dim, value_dim; events
# Both spellings in requests of the same 22 events (the backbone's state depends on where batches
# split the stream): a JSON event {"k_b64":"<44>","v_b64":"<24>"} is 91 bytes, 12 + 92*22 = 2036 <=
# 2048; a binary one 48 bytes, 20 + 48*22 = 1076.
PER_BODY, JSON_LIMIT, BIN_LIMIT = 22, 2048, 20 + 48 * 22


def bin_events():
    keys, vals = [], []
    for i in range(BN):
        k = [math.sin(i * 0.37 + j * (1 + i % 5)) for j in range(BH * BD)]
        for h in range(BH):
            n = math.sqrt(sum(x * x for x in k[h * BD:(h + 1) * BD]))
            k[h * BD:(h + 1) * BD] = [x / n for x in k[h * BD:(h + 1) * BD]]
        keys.append(k)
        vals.append([math.sin(i * 0.11 + j * 1.7) * (1 + j) for j in range(BH * BV)])
    return keys, vals


BCFG = {"heads": BH, "dim": BD, "value_dim": BV, "slots": 8, "chunk": 16}


def same_answers(c, a, b, keys):
    """Sessions a and b answer full, window and state reads with the same bits, and have the same
    length, chunks and backbone norms."""
    ia, ib = c.get_session(a), c.get_session(b)
    for key in ("length", "chunks", "backbone"):
        assert ia[key] == ib[key], (key, ia[key], ib[key])
    other = [math.cos(j * 0.3) for j in range(BH * BD)]
    qs = [{"q": q, "route": r} for r in ("full", "window", "state")
          for q in (keys[0], keys[17], keys[200], keys[-1], other)]
    ra, rb = c.session(a).query(qs), c.session(b).query(qs)
    assert len(ra) == len(rb) == len(qs)
    for x, y in zip(ra, rb):
        assert x.ok and y.ok, (x, y)
        assert dict(x) == dict(y), (x, y)   # v (base64: bit for bit), event, score, chunks
        assert len(memattn.unpack_f32(x["v"]) if isinstance(x["v"], str) else x["v"]) == BH * BV
    assert ra[0]["event"] == 0 and ra[2]["event"] == 200, (ra[0], ra[2])


def test_f32_spellings():
    # Every accepted spelling of the same floats packs to the same little-endian float32 bytes.
    rows = [[0.5, -1.0, 3.25], [1e-3, 2.0, -0.0]]
    want = struct.pack("<6f", *(x for r in rows for x in r))
    flat = [x for r in rows for x in r]
    spellings = [rows, tuple(tuple(r) for r in rows), iter(rows), flat, array.array("f", flat),
                 want, bytearray(want), memoryview(want), memattn.pack_f32(flat),
                 [array.array("f", r) for r in rows], [struct.pack("<3f", *r) for r in rows],
                 [rows[0], array.array("f", rows[1])]]
    for sp in spellings:
        assert bytes(memattn._f32_view(sp)) == want, sp
    assert bytes(memattn._f32_view([])) == b""


def test_binary_round_trip():
    keys, vals = bin_events()
    cj = memattn.Client(D.base, max_body=JSON_LIMIT)
    cb = memattn.Client(D.base, max_body=BIN_LIMIT)
    assert cb.events_binary                       # this daemon reports batch.events_binary
    sb = cb.create_session("py-bin", BCFG)
    sj = cj.create_session("py-json", BCFG)
    bodies = (BN + PER_BODY - 1) // PER_BODY
    out = sb.append_f32(keys, vals)               # lists of per-event lists; auto: binary
    assert out["binary"] is True and out["appended"] == BN and out["length"] == BN, out
    assert out["batches"] == bodies, out
    out = sj.append_f32(keys, vals, binary=False)
    assert out["binary"] is False and out["appended"] == BN and out["batches"] == bodies, out
    same_answers(cb, "py-bin", "py-json", keys)
    # Other spellings of the same floats: a flat array.array and packed bytes, the shape read from
    # GET /v1/sessions/{id} (a handle without config).
    cb.create_session("py-bin2", BCFG)
    flat = array.array("f", [x for k in keys for x in k])
    packed = array.array("f", [x for v in vals for x in v])
    if sys.byteorder == "big":
        packed.byteswap()
    out = cb.session("py-bin2").append_f32(flat, packed.tobytes(), binary=True)
    assert out["binary"] is True and out["appended"] == BN and out["batches"] == bodies, out
    same_answers(cb, "py-bin2", "py-json", keys)
    # Nothing to send: no request.
    sent = cb.requests_sent
    assert sb.append_f32([], [])["appended"] == 0 and cb.requests_sent == sent
    cb.close()
    cj.close()


def test_binary_errors():
    keys, vals = bin_events()
    c = memattn.Client(D.base, max_body=BIN_LIMIT)
    s = c.create_session("py-binerr", BCFG)
    s.append_f32(keys[:100], vals[:100], binary=True)
    # A shape that is not the session's: the daemon's 400 dim_mismatch, decoded; nothing applied.
    e = expect_error(lambda: s.append_f32(keys[:10], vals[:10], heads=1, dim=8, value_dim=4, binary=True),
                     400, "dim_mismatch")
    assert "binary batch" in e.message and "heads 1, dim 8, value_dim 4" in e.message, e.message
    assert e.appended == 0
    expect_error(lambda: s.append_f32([k[:4] for k in keys[:10]], vals[:10], heads=1, dim=4, value_dim=4,
                                      binary=False), 400, "dim_mismatch")
    assert s.info()["length"] == 100
    # A NaN in a later body: the bodies before it stay applied, the error says how many events.
    bad = [list(k) for k in keys[:200]]
    bad[150][3] = float("nan")
    e = expect_error(lambda: s.append_f32(bad, vals[:200], binary=True), 400, "non_finite")
    assert e.appended == 132, e.appended   # 6 bodies of 22; the 7th holds event 150
    assert s.info()["length"] == 100 + 132
    # Refused by the client before anything is sent.
    sent = c.requests_sent
    expect_error(lambda: s.append_f32(keys[:3], vals[:2]), 0, "invalid")          # 3 keys, 2 values
    expect_error(lambda: s.append_f32(keys[:3], vals[:2], binary=False), 0, "invalid")
    expect_error(lambda: s.append_f32([1.0] * 7, vals[:1]), 0, "invalid")         # not whole events
    expect_error(lambda: s.append_f32(keys[:1], vals[:1], dim=0), 0, "invalid")
    expect_error(lambda: s.append_f32(keys[:1], vals[:1], binary=True, max_body=40), 0, "body_too_large")
    assert c.requests_sent == sent
    assert s.info()["length"] == 100 + 132
    c.close()


class _FlakyEvents(http.server.BaseHTTPRequestHandler):
    """POST: answers 503 twice, then 200; records each request's key, Content-Type and body."""
    seen: list = []
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _FlakyEvents.seen.append((self.headers.get("Idempotency-Key"), self.headers.get("Content-Type"), body))
        if len(_FlakyEvents.seen) <= 2:
            ans, status = b'{"error":{"code":"overloaded","message":"busy"}}', 503
        else:
            ans, status = b'{"length":3,"appended":3,"writes":[],"void_writes":[],"evicted":[]}', 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ans)))
        if status == 503:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(ans)

    def log_message(self, *a):
        pass


def test_binary_retries():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyEvents)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        c = memattn.Client("http://127.0.0.1:%d" % srv.server_address[1], retries=3, backoff=0.001, max_body=4096)
        out = c.session("x").append_f32([[1, 0], [0, 1], [-0.5, 2]], [0.25, -3, 1e-3],
                                        heads=1, dim=2, value_dim=1, binary=True)
        assert out["appended"] == 3 and out["batches"] == 1 and out["binary"] is True, out
        want = b"MAEV" + struct.pack("<4I9f", 3, 1, 2, 1, 1, 0, 0, 1, -0.5, 2, 0.25, -3, 1e-3)
        seen = _FlakyEvents.seen
        assert len(seen) == 3 and c.requests_sent == 3, seen
        for key, ctype, body in seen:   # one key, one body, on every retry
            assert key == seen[0][0] and len(key) == 32, seen
            assert ctype == "application/octet-stream" and body == want, (ctype, body)
    finally:
        srv.shutdown()
        srv.server_close()


class _OldDaemon(http.server.BaseHTTPRequestHandler):
    """A daemon whose GET /v1/info does not report batch.events_binary: records every request."""
    seen: list = []
    protocol_version = "HTTP/1.1"

    def _answer(self, ans):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ans)))
        self.end_headers()
        self.wfile.write(ans)

    def do_GET(self):
        _OldDaemon.seen.append(("GET", self.path, None, None, None))
        self._answer(b'{"name":"memattn","limits":{"max_body":4096}}')

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _OldDaemon.seen.append(("POST", self.path, self.headers.get("Content-Type"),
                                self.headers.get("Idempotency-Key"), body))
        n = len(json.loads(body)["events"])
        self._answer(json.dumps({"length": n, "appended": n, "writes": [], "void_writes": [], "evicted": []}).encode())

    def log_message(self, *a):
        pass


def test_binary_auto_falls_back_to_json():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OldDaemon)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        c = memattn.Client("http://127.0.0.1:%d" % srv.server_address[1])
        s = c.session("x")
        k, v = [[1, 0], [0, 1], [-0.5, 2]], [[0.25], [-3], [1e-3]]
        out = s.append_f32(k, v, heads=1, dim=2, value_dim=1)
        assert out["binary"] is False and out["appended"] == 3, out
        assert not c.events_binary and c.max_body == 4096
        out = s.append_f32(array.array("f", [x for r in k for x in r]), [0.25, -3, 1e-3], heads=1, dim=2, value_dim=1)
        assert out["binary"] is False and out["appended"] == 3, out
    finally:
        srv.shutdown()
        srv.server_close()
    seen = _OldDaemon.seen
    assert [x[0] for x in seen] == ["GET", "POST", "POST"], seen      # GET /v1/info once
    want = [{"k_b64": memattn.pack_f32(a), "v_b64": memattn.pack_f32(b)} for a, b in zip(k, v)]
    for _, path, ctype, key, body in seen[1:]:
        assert path == "/v1/sessions/x/events" and ctype == "application/json", (path, ctype)
        assert json.loads(body) == {"events": want}, body           # lists and arrays, the same JSON
    assert seen[1][3] != seen[2][3]                                   # two calls: two keys


class _Proxy(http.server.BaseHTTPRequestHandler):
    """Forwards to the daemon (_Proxy.target); the answer to the first POST is lost (the connection
    closed without it). Records each POST's key and whether the daemon's answer was a replay."""
    target = ""
    drop = 0
    posts: list = []
    protocol_version = "HTTP/1.1"

    def _forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        host, port = _Proxy.target.rsplit(":", 1)
        up = http.client.HTTPConnection(host, int(port), timeout=30)
        hdrs = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        up.request(self.command, self.path, body=body, headers=hdrs)
        resp = up.getresponse()
        data = resp.read()
        up.close()
        if self.command == "POST":
            _Proxy.posts.append((self.headers.get("Idempotency-Key"), resp.getheader("Idempotent-Replayed")))
            if _Proxy.drop > 0:   # the daemon applied it; the client never hears
                _Proxy.drop -= 1
                self.close_connection = True
                return
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "content-length", "date", "server"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _forward

    def log_message(self, *a):
        pass


def test_binary_idempotent_replay():
    keys, vals = bin_events()
    memattn.Client(D.base).create_session("py-replay", BCFG)
    _Proxy.target, _Proxy.drop, _Proxy.posts = D.addr, 1, []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        c = memattn.Client("http://127.0.0.1:%d" % srv.server_address[1], retries=3, backoff=0.001, max_body=4096)
        out = c.session("py-replay").append_f32(keys[:20], vals[:20], heads=BH, dim=BD, value_dim=BV, binary=True)
        assert out["appended"] == 20 and out["length"] == 20 and out["batches"] == 1, out
        c.close()
    finally:
        srv.shutdown()
        srv.server_close()
    posts = _Proxy.posts
    assert len(posts) == 2, posts                           # the lost answer's request, then its retry
    assert posts[0][0] == posts[1][0] and len(posts[0][0]) == 32, posts
    assert posts[0][1] is None and posts[1][1] == "true", posts   # the retry was answered from the record
    assert memattn.Client(D.base).get_session("py-replay")["length"] == 20   # applied once


def main() -> int:
    global D
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_") and callable(f)]
    if len(sys.argv) > 1:
        tests = [(n, f) for n, f in tests if any(a in n for a in sys.argv[1:])]
    passed = failed = 0
    D = Daemon()
    try:
        for name, fn in tests:
            try:
                fn()
            except Exception:
                failed += 1
                print(f"FAIL {name}")
                traceback.print_exc()
            else:
                passed += 1
                print(f"ok   {name}")
    finally:
        rc = D.stop()
    if rc != 0:
        print(f"FAIL daemon exit status {rc}")
        failed += 1
    print(f"python client: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
