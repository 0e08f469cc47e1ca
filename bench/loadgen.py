"""The fallback load generator when wrk is not installed (cheap, but Python: it caps lower than wrk).

`python -m bench.loadgen URL FILE PER_REQUEST CONTENT_TYPE SECONDS CONNECTIONS` prints one
`LOADJSON {...}` line with the same fields as the wrk runs.
"""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp
import orjson

from bench.env import latency_ms


async def main(url: str, path: str, per: int, ctype: str, seconds: float, connections: int) -> dict:
    lines = [x for x in open(path, "rb").read().split(b"\n") if x]
    bodies = [b"\n".join(lines[i:i + per]) + (b"\n" if per > 1 else b"") for i in range(0, len(lines) - per + 1, per)]
    bodies = bodies[:2000]
    latencies: list[float] = []
    status: dict[str, int] = {"202": 0, "503": 0, "503_with_retry_after": 0, "other": 0}
    errors = 0
    deadline = time.monotonic() + seconds
    headers = {"Content-Type": ctype}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:

        async def worker(n: int) -> None:
            nonlocal errors
            i = n
            while time.monotonic() < deadline:
                body = bodies[i % len(bodies)]
                i += connections
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        code = response.status
                        retry = "Retry-After" in response.headers
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)
                if code == 202:
                    status["202"] += 1
                elif code == 503:
                    status["503"] += 1
                    status["503_with_retry_after"] += int(retry)
                else:
                    status["other"] += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(n) for n in range(connections)))
        elapsed = time.monotonic() - started
    n = len(latencies)
    return {"tool": "python-aiohttp (fallback)", "connections": connections, "threads": 1, "seconds": elapsed,
            "requests": n, "requests_per_s": n / elapsed, "non_2xx": status["503"] + status["other"],
            "socket_errors": errors, "ok_per_s": status["202"] / elapsed, "latency_ms": latency_ms(latencies),
            "status": status}


if __name__ == "__main__":
    url, path, per, ctype, seconds, connections = sys.argv[1:7]
    result = asyncio.run(main(url, path, int(per), ctype, float(seconds), int(connections)))
    print("LOADJSON " + orjson.dumps(result).decode())
