#!/usr/bin/env python3
"""tests/clients/test_python_client.py — clients/python/memattn.py end to end against the real daemon.

Run from the repository root with MEMATTN_BIN set (tests/e2e/test_clients.c does, in `make check`).
Each test_* function gets fresh daemons as it needs; the closing line is "N passed, N failed" and the
exit status is 1 when anything failed.
"""
from __future__ import annotations

import http.server
import math
import os
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
