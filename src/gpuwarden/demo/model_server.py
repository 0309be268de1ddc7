"""A harmless stand-in for a model server, used by ``gpuwarden serve --demo`` and the tests
(``python -m gpuwarden.demo.model_server``).

It serves ``GET /health`` (200), ``GET /`` (which GPUs it was given), ``GET /stream?words=N`` (N
words, one chunk each, as a language model streams its answer) and ``POST /echo`` (the request's body,
method, path and headers back; ``X-Echo-Set-Cookie``, ``X-Echo-Content-Security-Policy`` and
``X-Echo-Location`` come back as response headers, to test what a proxy passes on) on ``--port``,
logs a line now and then, and exits cleanly on SIGTERM / Ctrl+C. It loads nothing and downloads nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/stream"):
            self._stream()
            return
        body = json.dumps({
            "model": os.environ.get("GPUWARDEN_MODEL"),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "pid": os.getpid(),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.dumps({"method": self.command, "path": self.path, "body": self.rfile.read(length).decode(),
                           "headers": {name.lower(): value for name, value in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for header in ("Set-Cookie", "Content-Security-Policy", "Location"):  # what a proxy must not pass on as is
            if self.headers.get(f"X-Echo-{header}"):
                self.send_header(header, self.headers[f"X-Echo-{header}"])
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        """``words`` chunks a tenth of a second apart (chunked transfer encoding)."""
        query = dict(part.partition("=")[::2] for part in self.path.partition("?")[2].split("&") if part)
        words = min(int(query.get("words", "5")) if query.get("words", "").isdigit() else 5, 1000)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for number in range(words):
            chunk = f"word{number} ".encode()
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()
            time.sleep(0.1)
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: object) -> None:
        return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="serve /health here (0: no server)")
    parser.add_argument("--startup-seconds", type=float, default=1.0, help="pretend to load for this long")
    parser.add_argument("--fail-after", type=float, default=None, help="exit with code 3 after this long")
    parser.add_argument("--registry", type=Path, default=None,
                        help="the demo machine's folder: show this process on its GPUs (gpu_source = demo)")
    parser.add_argument("--memory-mib", type=int, default=4096, help="the GPU memory it holds once loaded")
    options = parser.parse_args(argv)
    stop = threading.Event()
    show = _Registration(options.registry, options.memory_mib)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)
    print(f"demo model {os.environ.get('GPUWARDEN_MODEL')} on CUDA_VISIBLE_DEVICES="
          f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}: loading...", flush=True)
    show.loading()
    stop.wait(options.startup_seconds)
    show.ready()
    server = None
    if options.port:
        server = ThreadingHTTPServer(("127.0.0.1", options.port), _Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"demo model ready (port {options.port or 'none'})", flush=True)
    started = time.monotonic()
    try:
        while not stop.wait(1.0):
            if options.fail_after is not None and time.monotonic() - started >= options.fail_after:
                print("demo model: simulated crash", flush=True)
                return 3
    finally:
        show.gone()
    if server is not None:
        server.shutdown()
    print("demo model stopped", flush=True)
    return 0


class _Registration:
    """On the demo machine (``--registry``), this process shows on the GPUs it was given: a CUDA
    context's worth while it loads, all of its memory once ready, nothing once stopped."""

    LOADING_MIB = 600

    def __init__(self, folder: Path | None, memory_mib: int) -> None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        self.gpus = [int(part) for part in visible.split(",") if part.strip().isdigit()]
        self.folder = folder if self.gpus else None
        self.memory_mib = max(0, memory_mib)
        self.path: Path | None = None

    def loading(self) -> None:
        self._show(min(self.memory_mib, self.LOADING_MIB))

    def ready(self) -> None:
        self._show(self.memory_mib)

    def _show(self, memory_mib: int) -> None:
        if self.folder is not None:
            from gpuwarden.probe.demo_registry import register_this_process

            with contextlib.suppress(OSError):
                self.path = register_this_process(self.folder, self.gpus, memory_mib)

    def gone(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
