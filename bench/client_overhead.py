#!/usr/bin/env python3
"""bench/client_overhead.py — what clients/python/memattn.py costs over raw HTTP, ingest and queries.

Usage (from the repository root, after `make`):
    python3 bench/client_overhead.py [--events 20000] [--dim 64] [--batch 500] [--queries 2000] [--rounds 3]

Starts build/memattnd (release) on a free port with a fresh data directory, then, in rounds that
alternate raw and client so drift hits both alike:
  ingest  raw:    http.client POSTs of prebuilt `{"events":[...]}` bodies (k_b64/v_b64 already packed:
                  only HTTP + the daemon are timed)
          client: Session.append() of the same events as Python float lists, `--batch` events per
                  request (max_body set to fit that many), so the client's packing, JSON and batching
                  are inside the timing
          raw binary: http.client POSTs of prebuilt application/octet-stream bodies ("MAEV" header,
                  float32 keys then values; docs/API.md "Binary event batches")
          f32 binary / f32 JSON: Session.append_f32(keys, values) of the same vectors as lists of
                  Python float lists, binary=True / binary=False ({"k_b64","v_b64"} events); these and
                  raw binary carry no payload (binary batches cannot), every ingest sends `--batch`
                  events a request
The five ingests run in an order rotated each round.
  query   raw:    http.client POST of a prebuilt one-query body, one request per query
          client: Session.query([{"q": floats}]) per query (packing, JSON, parsing the answer into Result)
Each ingest goes to its own fresh session. Queries all go to one session ingested (and warmed up with
a few hundred queries) before the rounds, raw first in even rounds and client first in odd ones: a
freshly ingested session answers its first queries slower, which would otherwise be charged to
whichever side comes first. Prints events/s and microseconds per query (medians over
rounds) and the client/raw ratio. Then runs build/bench/client_overhead (the C client against raw
libcurl, the same measurements; built by `make bench`) against the same daemon.
"""
from __future__ import annotations

import argparse
import array
import base64
import http.client
import json
import math
import os
import random
import statistics
import struct
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "clients"))

import memattn  # noqa: E402
from daemon import Daemon  # noqa: E402

INGESTS = ("raw", "client", "raw_bin", "f32_bin", "f32_json")


def vec(rng: random.Random, n: int) -> list:
    x = [rng.gauss(0, 1) for _ in range(n)]
    s = math.sqrt(sum(v * v for v in x))
    return [v / s for v in x]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    rng = random.Random(1)
    events = [{"k": vec(rng, a.dim), "v": vec(rng, a.dim), "payload": i} for i in range(a.events)]
    queries = [vec(rng, a.dim) for _ in range(a.queries)]
    # raw: the same events, packed and serialised before the clock starts
    packed = [json.dumps({"k_b64": memattn.pack_f32(e["k"]), "v_b64": memattn.pack_f32(e["v"]),
                          "payload": e["payload"]}, separators=(",", ":")) for e in events]
    bodies = [("{\"events\":[" + ",".join(packed[i:i + a.batch]) + "]}").encode()
              for i in range(0, a.events, a.batch)]
    max_body = max(len(b) for b in bodies) + 64
    qbodies = [json.dumps({"queries": [{"q_b64": memattn.pack_f32(q)}]}).encode() for q in queries]
    keys = [e["k"] for e in events]
    vals = [e["v"] for e in events]
    bbodies = []
    for i in range(0, a.events, a.batch):
        m = min(a.batch, a.events - i)
        kb, vb = array.array("f", [x for k in keys[i:i + m] for x in k]), array.array("f", [x for v in vals[i:i + m] for x in v])
        if sys.byteorder == "big":
            kb.byteswap()
            vb.byteswap()
        bbodies.append(b"MAEV" + struct.pack("<4I", m, 1, a.dim, a.dim) + kb.tobytes() + vb.tobytes())
    b64 = (a.dim * 4 + 2) // 3 * 4
    max_body_bin = 20 + a.batch * 8 * a.dim                     # `batch` events a binary body
    max_body_f32j = 12 + a.batch * (24 + 2 * b64)               # `batch` {"k_b64","v_b64"} events
    binary = os.environ.get("MEMATTN_BIN", os.path.join(ROOT, "build", "memattnd"))
    res = {"ingest_" + k: [] for k in INGESTS}
    res.update({"query_raw": [], "query_client": []})
    cpu = {k: [] for k in res}   # this process's CPU seconds per event / per query: the client's own cost
    with Daemon(["--max-body", str(max(1 << 20, max_body))], binary=binary) as d:
        host, port = d.addr.rsplit(":", 1)
        cfg = {"dim": a.dim}
        conn = http.client.HTTPConnection(host, int(port))
        conn.request("PUT", "/v1/sessions/q", json.dumps(cfg))
        conn.getresponse().read()
        for b in bodies:
            conn.request("POST", "/v1/sessions/q/events", b, {"Content-Type": "application/json"})
            conn.getresponse().read()
        for b in qbodies[:300]:
            conn.request("POST", "/v1/sessions/q/query", b, {"Content-Type": "application/json"})
            conn.getresponse().read()
        conn.close()
        for r in range(a.rounds):
            conn = http.client.HTTPConnection(host, int(port))
            c = memattn.Client(d.base, max_body=max_body)
            cb = memattn.Client(d.base, max_body=max_body_bin)
            cj = memattn.Client(d.base, max_body=max_body_f32j)
            for j in range(len(INGESTS)):
                which = INGESTS[(j + r) % len(INGESTS)]
                sid = f"{which}{r}"
                c.create_session(sid, cfg)
                s, out = None, None
                t, p = time.perf_counter(), time.process_time()
                if which in ("raw", "raw_bin"):
                    ctype = "application/json" if which == "raw" else "application/octet-stream"
                    for b in (bodies if which == "raw" else bbodies):
                        conn.request("POST", f"/v1/sessions/{sid}/events", b, {"Content-Type": ctype})
                        resp = conn.getresponse()
                        resp.read()
                        assert resp.status == 200, resp.status
                elif which == "client":
                    out = c.session(sid).append(events)
                elif which == "f32_bin":
                    out = cb.session(sid).append_f32(keys, vals, heads=1, dim=a.dim, value_dim=a.dim, binary=True)
                else:
                    out = cj.session(sid).append_f32(keys, vals, heads=1, dim=a.dim, value_dim=a.dim, binary=False)
                res["ingest_" + which].append(a.events / (time.perf_counter() - t))
                cpu["ingest_" + which].append((time.process_time() - p) / a.events * 1e6)
                if out is not None:
                    assert out["appended"] == a.events and out["batches"] == len(bodies), (which, out["batches"], len(bodies))
            cb.close()
            cj.close()
            qs = c.session("q")
            for side in (("raw", "client") if r % 2 == 0 else ("client", "raw")):
                t, p = time.perf_counter(), time.process_time()
                if side == "raw":
                    for b in qbodies:
                        conn.request("POST", "/v1/sessions/q/query", b, {"Content-Type": "application/json"})
                        resp = conn.getresponse()
                        json.loads(resp.read())
                else:
                    for q in queries:
                        qs.query([{"q": q}])
                res["query_" + side].append((time.perf_counter() - t) / a.queries * 1e6)
                cpu["query_" + side].append((time.process_time() - p) / a.queries * 1e6)
            conn.close()
            c.close()
        cbench = os.path.join(os.path.dirname(binary), "bench", "client_overhead")
        cout = None
        if os.access(cbench, os.X_OK):
            cout = subprocess.run([cbench, d.base, str(a.events), str(a.dim), str(a.batch), str(a.queries),
                                   str(a.rounds)], capture_output=True, text=True, check=True).stdout
    m = {k: statistics.median(v) for k, v in res.items()}
    u = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"events {a.events} x dim {a.dim}, {len(bodies)} batches of {a.batch}; {a.queries} queries; "
          f"{a.rounds} rounds (medians)")
    print("                          wall                    client CPU")
    print(f"ingest  raw http.client  {m['ingest_raw']:10.0f} events/s       {u['ingest_raw']:7.1f} us/event")
    print(f"ingest  memattn.py       {m['ingest_client']:10.0f} events/s       {u['ingest_client']:7.1f} us/event"
          f"   ({m['ingest_client'] / m['ingest_raw']:.2f} of raw throughput, "
          f"+{u['ingest_client'] - u['ingest_raw']:.1f} us CPU/event)")
    print(f"ingest  raw binary       {m['ingest_raw_bin']:10.0f} events/s       {u['ingest_raw_bin']:7.1f} us/event"
          f"   ({m['ingest_raw_bin'] / m['ingest_raw']:.2f} of raw JSON throughput)")
    print(f"ingest  append_f32 bin   {m['ingest_f32_bin']:10.0f} events/s       {u['ingest_f32_bin']:7.1f} us/event"
          f"   ({m['ingest_f32_bin'] / m['ingest_raw_bin']:.2f} of raw binary, "
          f"+{u['ingest_f32_bin'] - u['ingest_raw_bin']:.1f} us CPU/event)")
    print(f"ingest  append_f32 JSON  {m['ingest_f32_json']:10.0f} events/s       {u['ingest_f32_json']:7.1f} us/event"
          f"   (binary is {m['ingest_f32_bin'] / m['ingest_f32_json']:.2f}x this, "
          f"{u['ingest_f32_bin'] - u['ingest_f32_json']:+.1f} us CPU/event)")
    print(f"query   raw http.client  {m['query_raw']:10.1f} us/query       {u['query_raw']:7.1f} us/query")
    print(f"query   memattn.py       {m['query_client']:10.1f} us/query       {u['query_client']:7.1f} us/query"
          f"   ({m['query_client'] / m['query_raw']:.2f}x raw latency, "
          f"+{u['query_client'] - u['query_raw']:.1f} us CPU/query)")
    if cout is not None:
        print(cout, end="")
    else:
        print(f"(C client: {cbench} not built; `make bench` builds it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
