"""`blobwriter serve`: the API under uvicorn, refusing to listen beyond loopback without a key."""

from __future__ import annotations

import ipaddress
import logging
import socket

from .api import create_app
from .config import Settings
from .errors import ConfigError

log = logging.getLogger("blobwriter.api")


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) is reachable only from this machine."""
    name = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


def check_exposure(settings: Settings, host: str, insecure_no_key: bool) -> None:
    """Refuse to listen beyond loopback without api_key unless told to: anyone who could reach the
    address could write entries (and read health details)."""
    if settings.api_key or is_loopback(host):
        return
    if not insecure_no_key:
        raise ConfigError(
            f"refusing to serve on {host} without an API key: anyone who can reach it could write log entries. "
            "Set BLOBWRITER_API_KEY (clients send it as the x-functions-key header or ?code=), listen on "
            "127.0.0.1, or pass --insecure-no-key to serve without a key anyway.")
    log.warning("Serving on %s WITHOUT an API key (--insecure-no-key): anyone who can reach it can write "
                "log entries", host)


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 7071, log_level: str = "info",
          insecure_no_key: bool = False) -> None:
    """Run the API under uvicorn until SIGINT/SIGTERM; the writer flushes on shutdown."""
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("`blobwriter serve` needs uvicorn, which the Functions deployment leaves out: "
                          "pip install 'blobwriter[serve]'") from None

    check_exposure(settings, host, insecure_no_key)
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDK logs every request at INFO
    app = create_app(settings, check_api_key=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                timeout_graceful_shutdown=int(settings.stop_timeout) + 5)
