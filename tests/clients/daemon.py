"""tests/clients/daemon.py — start the real memattnd on a free port for the Python-driven tests
(client, browser UI) and the client benchmark.

Daemon(args) runs $MEMATTN_BIN (default build/memattnd) with `--listen 127.0.0.1:0 --data <fresh
temp dir>` plus `args`, reads the `listening on HOST:PORT` line, and exposes `.base`
("http://127.0.0.1:PORT"). stop() sends SIGTERM and returns the exit status (the tests want 0); the
temp dir goes with it. Use it as a context manager.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from typing import List, Optional, Sequence


class Daemon:
    def __init__(self, args: Sequence[str] = (), binary: Optional[str] = None) -> None:
        self.binary = binary or os.environ.get("MEMATTN_BIN", "build/memattnd")
        self.dir = tempfile.mkdtemp(prefix="memattn-clients-")
        self.log_path = os.path.join(self.dir, "stderr.log")
        cmd: List[str] = [self.binary, "--listen", "127.0.0.1:0", "--data", os.path.join(self.dir, "data")]
        cmd += list(args)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening on "):
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"{self.binary} did not start: {line!r}; log: {self.log()}")
        self.addr = line.split()[-1]
        self.base = "http://" + self.addr

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
