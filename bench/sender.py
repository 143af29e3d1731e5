"""A paced (open-loop) HTTP/1.1 sender for bench/run.py.

wrk keeps every connection busy (closed loop) and cannot send at a fixed rate, so the
harness uses this for what needs a rate: "p99 at half of the maximum sustainable rate"
and the worker's enqueue -> done lag at 500 events/s. It also loads a fixed number of
events (rate=None: as fast as `connections` keep-alive connections allow).

Open loop, as wrk2 does it: request i is due at start + i / rate whatever happened to the
previous ones, and its latency is measured from when it was *due*, so a server that stalls
is charged for the requests queued behind the stall (no coordinated omission). The
service time (from the moment the request was written) is kept too.

Every request carries a unique X-GitHub-Delivery (the worker's ledger skips repeats).
Standard library only; one asyncio loop in one process.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class SendResult:
    sent: int = 0
    ok: int = 0  # 2xx answers
    statuses: dict = field(default_factory=dict)
    socket_errors: int = 0
    elapsed_s: float = 0.0
    latencies_s: list = field(default_factory=list)  # from due time (open loop), 2xx only
    service_s: list = field(default_factory=list)  # from write time, 2xx only
    max_start_lag_s: float = 0.0  # how late the sender itself started a request

    @property
    def errors(self) -> int:
        return self.sent - self.ok

    @property
    def achieved_rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0


def build_head(host: str, port: int, path: str, signature: str, body_len: int,
               delivery_prefix: str):
    """Returns (head before the delivery id, head after it)."""
    before = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "User-Agent: GitHub-Hookshot/bench\r\n"
        "Content-Type: application/json\r\n"
        "X-GitHub-Event: issues\r\n"
        "X-GitHub-Hook-ID: 123456789\r\n"
        f"X-Hub-Signature-256: sha256={signature}\r\n"
        f"Content-Length: {body_len}\r\n"
        f"X-GitHub-Delivery: {delivery_prefix}"
    ).encode()
    return before, b"\r\n\r\n"


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def send(host: str, port: int, path: str, body: bytes, signature: str, *,
               rate: float | None, count: int, connections: int,
               delivery_prefix: str, timeout_s: float = 30.0) -> SendResult:
    """Sends `count` requests, at `rate` per second (None: as fast as possible)."""
    before, after = build_head(host, port, path, signature, len(body), delivery_prefix)
    res = SendResult()
    next_index = 0
    start = time.perf_counter()

    async def connection_loop():
        nonlocal next_index
        reader = writer = None
        while True:
            i = next_index
            if i >= count:
                break
            next_index += 1
            due = start + i / rate if rate else time.perf_counter()
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                res.max_start_lag_s = max(res.max_start_lag_s, now - due)
            res.sent += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(host, port), timeout_s)
                written = time.perf_counter()
                writer.write(before + str(i).encode() + after + body)
                status = await asyncio.wait_for(_read_response(reader), timeout_s)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                    asyncio.LimitOverrunError, ValueError, IndexError):
                res.socket_errors += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            done = time.perf_counter()
            res.statuses[status] = res.statuses.get(status, 0) + 1
            if 200 <= status < 300:
                res.ok += 1
                res.latencies_s.append(done - due)
                res.service_s.append(done - written)
        if writer is not None:
            writer.close()

    await asyncio.gather(*(connection_loop() for _ in range(max(1, connections))))
    res.elapsed_s = time.perf_counter() - start
    return res


def run(*args, **kwargs) -> SendResult:
    return asyncio.run(send(*args, **kwargs))


def percentile(values, q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a list; NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]
