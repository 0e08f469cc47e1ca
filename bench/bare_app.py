"""The baseline: a bare ASGI app that reads the body and answers 202, on blobwriter serve's stack.

`python -m bench.bare_app PORT` runs it under uvicorn with uvloop and httptools (what
`blobwriter serve` gets from uvicorn[standard]), one worker, no access log.
"""

from __future__ import annotations

import sys

BODY = b'{"accepted":1}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 202, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                access_log=False, log_level="warning", lifespan="off")
