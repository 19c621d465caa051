#!/usr/bin/env python3
"""bench/delete_wal.py -- what deleting a session writes to the WAL, by row layout (docs/STORE.md,
"Events in rows of a page"; docs/RESULTS.md, "Paged sparse reads in rows of a page").

    python3 bench/delete_wal.py [DIR]

A table shaped like event_blocks (rowid table, primary key (sid, block), ON DELETE CASCADE from sessions)
holds two sessions of about 14,000 events of 512 bytes each, in rows of 7 events (3,584 bytes: a row fits
its leaf whole), of 8 (4,096 bytes: a page of events, schema 7) and of 64 (32 KiB, schemas 2 to 6). After
a TRUNCATE checkpoint one session is deleted in one transaction with secure_delete = FAST, as the store
does: the WAL's size then is what the delete wrote. Random bytes; sqlite's own page size (4 KiB).
"""
import os
import sqlite3
import sys
import tempfile


def run(d, events_per_row, rows):
    p = os.path.join(d, "t.db")
    for f in (p, p + "-wal", p + "-shm"):
        if os.path.exists(f):
            os.remove(f)
    c = sqlite3.connect(p, isolation_level=None)
    c.execute("PRAGMA journal_mode = WAL")
    c.execute("PRAGMA foreign_keys = ON")
    c.execute("CREATE TABLE sessions(sid INTEGER PRIMARY KEY, id TEXT)")
    c.execute("CREATE TABLE eb(sid INTEGER NOT NULL REFERENCES sessions(sid) ON DELETE CASCADE, block INTEGER,"
              " n INTEGER, k BLOB, v BLOB, ck INTEGER, PRIMARY KEY (sid, block))")
    half = events_per_row * 256
    c.execute("BEGIN")
    for s in (1, 2):
        c.execute("INSERT INTO sessions VALUES (?, ?)", (s, "s%d" % s))
    for b in range(rows):
        for s in (1, 2):
            c.execute("INSERT INTO eb VALUES (?, ?, ?, ?, ?, ?)",
                      (s, b, events_per_row, os.urandom(half), os.urandom(half), 1))
    c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.execute("PRAGMA secure_delete = FAST")
    c.execute("BEGIN IMMEDIATE")
    c.execute("DELETE FROM sessions WHERE sid = 1")
    c.execute("COMMIT")
    wal = os.path.getsize(p + "-wal")
    c.close()
    print("rows of %2d events (%5d bytes): %5d rows, %6d events deleted: WAL %6d KiB, %4d frames, "
          "%.3f KiB per event" % (events_per_row, 2 * half, rows, rows * events_per_row, wal // 1024,
                                 (wal - 32) // (4096 + 24), wal / 1024 / (rows * events_per_row)))


def main():
    with tempfile.TemporaryDirectory(dir=sys.argv[1] if len(sys.argv) > 1 else None) as d:
        for g, rows in ((7, 2000), (8, 1750), (64, 224)):
            run(d, g, rows)


if __name__ == "__main__":
    main()
