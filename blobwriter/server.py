"""`blobwriter serve`: the API under uvicorn, refusing to listen beyond loopback without a key."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn

from .api import WriterHolder, create_app
from .config import Settings
from .errors import ConfigError

ENTRIES_FAILED = 1  # stopped, but some accepted entries were reported failed (README, "Command line")
STARTUP_FAILURE = 3  # uvicorn's exit code when the app fails to start

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
    """Run the API under uvicorn until SIGINT, SIGTERM or SIGHUP; the writer flushes on shutdown. Returns
    once every accepted entry is written; raises SystemExit(ENTRIES_FAILED) if any was not."""
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("`blobwriter serve` needs uvicorn, which the Functions deployment leaves out: "
                          "pip install 'blobwriter[serve]'") from None

    check_exposure(settings, host, insecure_no_key)
    if settings.export_destination:
        log.warning("export_destination is set, but `blobwriter serve` exports nothing: the scheduled export "
                    "runs under Azure Functions (docs/DEPLOY.md); here, run `blobwriter export` from a scheduler "
                    "such as cron")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDK logs every request at INFO
    app = create_app(settings, check_api_key=True)
    # Open requests get as long to finish as the flush takes (a caller waiting for its entries is answered
    # by it), and a little more.
    graceful = int(settings.stop_timeout + settings.storage_timeout) + 5
    # log_config=None: uvicorn's lines go through the root logger as blobwriter's do (cli.py), one format
    # with timestamps, instead of uvicorn's own "INFO:     ..." without them.
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                            log_config=None, timeout_graceful_shutdown=graceful)
    sock = listen(host, port)
    server = _server_class(_url(sock), app.state.writer_holder)(config)
    # A hangup (the terminal or SSH session that started serve closing) stops it as SIGTERM does, flushing
    # the queue: by default it would end the process at once, every queued entry lost without a word.
    # Unless it is ignored (nohup): then it stays ignored.
    hangup = signal.getsignal(signal.SIGHUP)
    if hangup is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, server.handle_exit)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if hangup is not signal.SIG_IGN:
            signal.signal(signal.SIGHUP, hangup if hangup is not None else signal.SIG_DFL)
    if not server.started:  # as uvicorn.run: the app's startup failed (logged above)
        raise SystemExit(STARTUP_FAILURE)
    writer = app.state.writer_holder.writer
    accepted, written = (writer.metrics.accepted, writer.metrics.written) if writer is not None else (0, 0)
    if written < accepted:  # reported failed (logged above), or still queued after a forced exit
        log.error("Stopped; %d of the %d log entries accepted were NOT written", accepted - written, accepted)
        raise SystemExit(ENTRIES_FAILED)
    log.info("Stopped; %d log %s accepted, all written", accepted, "entry" if accepted == 1 else "entries")


def _url(sock: socket.socket) -> str:
    """The API's base URL on the bound socket (with the port chosen for --port 0)."""
    address, port = sock.getsockname()[:2]
    return f"http://[{address}]:{port}" if sock.family == socket.AF_INET6 else f"http://{address}:{port}"


def _server_class(url: str, holder: WriterHolder) -> type[uvicorn.Server]:
    """uvicorn's Server, except that
    - it says where it listens once started (uvicorn says so only for sockets it binds itself);
    - it starts writing out the queue as soon as it begins shutting down, while open requests finish
      (uvicorn would stop the app only after them): a caller waiting for its entries (?wait=true, ack:
      written) gets its 200, or its 503 if the flush could not write them, instead of being cancelled
      at timeout_graceful_shutdown (a 500 and a traceback) with the flush only starting then;
    - a signal it stopped on gracefully is not raised again once it has stopped (uvicorn does, so the
      process died of SIGTERM, or exited 130 on SIGINT, however the flush went): `serve` exits with its
      own code, 0 or ENTRIES_FAILED. A second Ctrl-C stops waiting for open requests, not for the flush
      (stop_timeout bounds it)."""

    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                log.info("Serving on %s (SIGTERM or Ctrl-C writes what is queued, then stops)", url)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            writer = holder.writer
            if writer is not None and writer.queue_depth:
                log.info("Writing %d queued log entries before exit (retrying for up to %gs, stop_timeout)",
                         writer.queue_depth, writer.settings.stop_timeout)
            flush = asyncio.ensure_future(holder.stop())
            try:
                await super().shutdown(sockets)
            finally:
                await flush
            if self.force_exit:  # uvicorn then skips the app's shutdown, whose cancellation is a traceback
                await self.lifespan.shutdown()  # quick: the writer is stopped

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    return Server


def listen(host: str, port: int) -> socket.socket:
    """The API's socket, bound before uvicorn starts (as uvicorn binds it), so that an address in use
    is one clear error (exit 2) rather than uvicorn's log line and its exit code 3. An IPv6 address
    may be given as in a URL, `[::1]`."""
    address = host.strip().removeprefix("[").removesuffix("]")
    sock = socket.socket(family=socket.AF_INET6 if ":" in address else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
