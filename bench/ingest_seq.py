#!/usr/bin/env python3
"""bench/ingest_seq.py — durable HTTP ingest of one client on one keep-alive connection, for comparing
two daemon builds side by side (docs/RESULTS.md, "Architecture round 2 ... before and after").

    bench/ingest_seq.py BUILD_A/memattnd BUILD_B/memattnd [ROUNDS]

Each round starts each daemon once (fresh --data directory, --max-body 64M), creates a session (H = 1,
d = 64) and posts 32 batches of 1,024 events (k_b64/v_b64, fixed seed), one at a time; prints events/s
per daemon per round, the daemons alternating so that the machine's mood hits both alike.
"""
import base64, http.client, json, random, shutil, struct, subprocess, sys, tempfile, time

def run(binary, bodies):
    d = tempfile.mkdtemp(prefix="memattn-ingseq-")
    p = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--data", d + "/data", "--max-body", "67108864"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        host, port = p.stdout.readline().strip().split()[-1].rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port))
        c.request("PUT", "/v1/sessions/s", json.dumps({"dim": 64}))
        c.getresponse().read()
        t0 = time.time()
        for b in bodies:
            c.request("POST", "/v1/sessions/s/events", b)
            r = c.getresponse()
            r.read()
            if r.status != 200:
                sys.exit("%s: POST events answered %d" % (binary, r.status))
        return len(bodies) * 1024 / (time.time() - t0)
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)

def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    a, b = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    random.seed(1)
    bodies = []
    for _ in range(32):
        evs = []
        for _ in range(1024):
            e = base64.b64encode(struct.pack("<64f", *[random.uniform(-1, 1) for _ in range(64)])).decode()
            evs.append({"k_b64": e, "v_b64": e})
        bodies.append(json.dumps({"events": evs}))
    for r in range(rounds):
        for name in (a, b):
            print("round %d %s %.0f events/s" % (r + 1, name, run(name, bodies)), flush=True)

main()
