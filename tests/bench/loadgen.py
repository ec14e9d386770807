"""The benchmarks' load generator: multipart uploads over keep-alive HTTP/1.1 connections.

It shares the server's two cores, so whatever it spends is taken from the server it measures.
httpx spent ~4 ms of CPU per 1 MP upload (building the multipart body, its connection pool
and response models); here every request is built whole before the clock starts and sent with
plain asyncio streams, and an answer is read by its Content-Length: a fraction of that.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

BOUNDARY = "raiox-bench-boundary"


def upload_request(host: str, path: str, image: bytes) -> bytes:
    """One POST with `image` as the multipart field `file`, as a browser form would send it."""
    body = b"".join(
        (
            f"--{BOUNDARY}\r\n".encode(),
            b'Content-Disposition: form-data; name="file"; filename="x.jpg"\r\n',
            b"Content-Type: image/jpeg\r\n\r\n",
            image,
            f"\r\n--{BOUNDARY}--\r\n".encode(),
        )
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    rejected_503: int = 0


class Connection:
    """One keep-alive connection, reopened when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def exchange(self, request: bytes) -> int:
        """Send one request, read its whole answer; returns the status code."""
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.reader, self.writer
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = dict(_header(line) for line in lines[1:] if line)
            await reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip().lower(), value.strip()


async def drive(url: str, images: list[bytes], concurrency: int) -> dict[str, Any]:
    """Upload every image once, `concurrency` at a time: latency percentiles of the 200s,
    their rate over the whole run, and the count of 503s and other failures."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [upload_request(f"{host}:{port}", parts.path, image) for image in images]
    tally = Tally()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)

    async def worker() -> None:
        connection = Connection(host, port)
        try:
            while not queue.empty():
                request = queue.get_nowait()
                start = time.perf_counter()
                try:
                    status = await asyncio.wait_for(connection.exchange(request), 120)
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                    tally.errors += 1
                    continue
                if status == 200:
                    tally.latencies_ms.append((time.perf_counter() - start) * 1000)
                elif status == 503:
                    tally.rejected_503 += 1
                else:
                    tally.errors += 1
        finally:
            connection.close()

    wall = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - wall
    latencies = tally.latencies_ms
    return {
        "p50_ms": round(statistics.median(latencies), 2) if latencies else None,
        "p95_ms": round(_percentile(latencies, 95), 2),
        "p99_ms": round(_percentile(latencies, 99), 2),
        "rps": round(len(latencies) / wall, 2),
        "errors": tally.errors,
        "rejected_503": tally.rejected_503,
    }


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")
