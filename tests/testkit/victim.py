"""The process every supervisor in the benchmarks restarts: a tiny stdlib HTTP server.

It writes its pid first thing (so "new PID" means the new process is running our code),
then binds 127.0.0.1:PORT and answers ``GET /`` with 200. Options:

* ``--daemon``: double-fork and detach first, as Monit expects of a start program.
* ``--requests-log F``: append the wall-clock time of every request (bench_hang uses it to
  know when the first failing check arrived).
* ``--exit-after S``: crash with exit code 3 after S seconds (a crash-looping service).
* SIGUSR1 switches to *hang* mode: the process stays alive and keeps accepting, but never
  answers again, like a wedged server.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _write_pid(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)  # readers never see a half-written pidfile


def _daemonize() -> None:
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pidfile", required=True)
    p.add_argument("--daemon", action="store_true")
    p.add_argument("--requests-log")
    p.add_argument("--exit-after", type=float, help="crash (exit 3) after this many seconds")
    a = p.parse_args(argv)
    if a.daemon:
        _daemonize()
    _write_pid(a.pidfile)

    import signal
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hang = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: hang.set())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if a.requests_log:
                with open(a.requests_log, "a") as f:
                    f.write(f"{time.time():.6f}\n")
            if hang.is_set():
                threading.Event().wait()  # never answer; the process stays alive
            body = b'{"status":"healthy"}'
            self.send_response(200)
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
    if a.exit_after is not None:
        threading.Timer(a.exit_after, lambda: os._exit(3)).start()
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
