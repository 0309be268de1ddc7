"""A small HTTP/1.1 load generator for the web benchmark: keep-alive connections on raw asyncio
sockets (cheap enough per request that one core can drive a server on the other at thousands of
requests a second), and server-sent-event listeners.

Used by ``bench/bench_web.py``; Linux-first (the benchmark pins the server and this generator to
different cores), though nothing here is POSIX-only.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    latencies_ms: tuple[float, ...]
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile_ms(self, share: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def request_bytes(path: str, host: str, port: int, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: */*"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response (Content-Length or chunked): its status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        elif name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if length is not None:
        return status, await reader.readexactly(length)
    body = b""
    while chunked:
        size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
        body += await reader.readexactly(size + 2)
        if size == 0:
            break
    return status, body[:-2] if body else body


async def _worker(host: str, port: int, request: bytes, until: float, latencies: list[float],
                  counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(request)
            status, _ = await read_response(reader)
            latencies.append((time.perf_counter() - started) * 1000)
            counts[0 if status == 200 else 1] += 1
    finally:
        writer.close()


async def hammer(host: str, port: int, path: str, *, connections: int, seconds: float,
                 warmup_seconds: float = 1.0, headers: dict[str, str] | None = None) -> LoadResult:
    """``connections`` keep-alive clients asking for ``path`` back to back for ``seconds``."""
    request = request_bytes(path, host, port, headers)
    scratch: list[float] = []
    await asyncio.gather(*(_worker(host, port, request, time.perf_counter() + warmup_seconds, scratch, [0, 0])
                           for _ in range(connections)))
    latencies: list[float] = []
    counts = [0, 0]
    started = time.perf_counter()
    await asyncio.gather(*(_worker(host, port, request, started + seconds, latencies, counts)
                           for _ in range(connections)))
    return LoadResult(counts[0], time.perf_counter() - started, tuple(latencies), counts[1])


async def one_each(host: str, port: int, path: str, clients: int,
                   headers: dict[str, str] | None = None) -> LoadResult:
    """``clients`` clients asking for ``path`` once, all at the same moment."""
    request = request_bytes(path, host, port, headers)
    opened = [await asyncio.open_connection(host, port) for _ in range(clients)]
    latencies: list[float] = []
    errors = 0

    async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal errors
        started = time.perf_counter()
        writer.write(request)
        status, _ = await read_response(reader)
        latencies.append((time.perf_counter() - started) * 1000)
        errors += status != 200
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(ask(reader, writer) for reader, writer in opened))
    return LoadResult(clients - errors, time.perf_counter() - started, tuple(latencies), errors)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
