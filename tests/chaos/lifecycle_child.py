"""A supervised child for the lifecycle chaos tests: a stdlib HTTP server with a job.

It writes its pid first thing, then serves 127.0.0.1:PORT:

* ``GET /`` answers 200 (what Guardian's http check asks), or 500 while ``--fail-file``
  exists (a broken service whose brokenness survives a restart);
* ``GET /slow?s=N[&release=PATH]`` answers 200 with ``done <pid>`` after N seconds, or
  as soon as PATH exists: a long job (a ComfyUI prompt) in flight while Guardian is
  killed and replaced, which the test ends once the swap is over.

Output goes to stdout/stderr, which Guardian points at the supervised log file:

* ``--tick S`` prints ``tick <pid> <seq>`` every S seconds (lines written while no
  Guardian runs must still reach the log and the next report);
* ``--noisy BYTES_PER_S`` writes numbered lines to stdout and stderr at about that rate
  (a chatty service must not flood Guardian's own logs).

Every line goes out in a single ``write`` so a reader never sees half of one.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def _write_pid(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)


def _emit(fd: int, text: str) -> None:
    os.write(fd, text.encode())


def _ticker(every: float) -> None:
    seq = 0
    pid = os.getpid()
    while True:
        _emit(1, f"tick {pid} {seq}\n")
        seq += 1
        time.sleep(every)


def _noise(rate: float) -> None:
    """About ``rate`` bytes per second, alternating stdout and stderr, in 20 bursts/s."""
    seq = 0
    pad = "x" * 60
    line_len = len(f"NOISE out 00000000 {pad}\n")
    per_burst = max(1, int(rate / 20 / line_len))
    while True:
        for _ in range(per_burst):
            fd = 1 if seq % 2 == 0 else 2
            _emit(fd, f"NOISE {'out' if fd == 1 else 'err'} {seq:08d} {pad}\n")
            seq += 1
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pidfile", required=True)
    p.add_argument("--fail-file")
    p.add_argument("--tick", type=float)
    p.add_argument("--noisy", type=float)
    a = p.parse_args(argv)
    _write_pid(a.pidfile)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            code, body = 200, b'{"status":"healthy"}'
            if url.path == "/slow":
                query = parse_qs(url.query)
                seconds = float(query.get("s", ["5"])[0])
                release = query.get("release", [""])[0]
                _emit(1, f"job started ({seconds:g} s)\n")
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline and not (release and os.path.exists(release)):
                    time.sleep(0.01)
                body = f"done {os.getpid()}".encode()
                _emit(1, "job done\n")
            elif a.fail_file and os.path.exists(a.fail_file):
                code, body = 500, b'{"status":"broken"}'
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    _emit(1, f"listening on {a.port}\n")
    if a.tick:
        threading.Thread(target=_ticker, args=(a.tick,), daemon=True).start()
    if a.noisy:
        threading.Thread(target=_noise, args=(a.noisy,), daemon=True).start()
    server.serve_forever(poll_interval=0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
