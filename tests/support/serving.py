"""The API served over real HTTP (uvicorn) inside a test's own event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from tests.support.azurite import free_port


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[int]:
    """Serve `app` on 127.0.0.1 until the block ends; yields the port, once uvicorn listens."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, loop="asyncio", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():  # it could not start (the port taken, say): say why instead of waiting forever
                serving.result()
                raise AssertionError("uvicorn stopped before it started serving")
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await serving
