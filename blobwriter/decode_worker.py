"""A Reader's decoding worker processes, both sides of the pipe (see decoding.py).

`python -m blobwriter.decode_worker` runs `serve`: it reads the reader's sys.path and keys, then
length-prefixed pickled batches from stdin, and writes each batch's Answer to stdout, in order.
`Worker` is the reader's handle on one such process.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pickle
import signal
import struct
import sys
from collections import deque
from pathlib import Path
from typing import Any

from .codec import Decoder
from .decoding import Answer, decode_batch, keep_heap
from .keys import SecretKey

PIPE_BYTES = 4 * 1024 * 1024  # the size asked for the pipes to and from a worker (at most pipe-max-size)
_LENGTH = struct.Struct(">Q")

class WorkerError(RuntimeError):
    """A decoding worker process failed (it died, or could not start)."""


class Worker:
    """One `python -m blobwriter.decode_worker` process: batches go in on its stdin, answers come back on its
    stdout, in order. Not multiprocessing: that would run the caller's main module again in each
    worker (spawn) or fork a process that has threads (fork)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.waiting: deque[asyncio.Future[Answer]] = deque()
        self.reading = asyncio.create_task(self._read_answers())

    @classmethod
    async def start(cls, keys: list[SecretKey]) -> Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "blobwriter.decode_worker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, limit=2**26)
        for pipe in (process.stdin, process.stdout):
            _widen(pipe)
        worker = cls(process)
        worker._send((list(sys.path), keys))  # the keys travel through the pipe, never argv or the environment
        return worker

    def _send(self, message: Any) -> None:
        assert self.process.stdin is not None
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self.process.stdin.writelines((_LENGTH.pack(len(data)), data))  # no copy of the batch to prefix it

    def run(self, args: tuple[Any, ...]) -> asyncio.Future[Answer]:
        if self.reading.done():
            raise WorkerError(f"decoding worker {self.process.pid} has exited")
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self._send(args)
        return future

    async def _read_answers(self) -> None:
        assert self.process.stdout is not None
        failure: BaseException | None = None
        try:
            while True:
                size = _LENGTH.unpack(await self.process.stdout.readexactly(_LENGTH.size))[0]
                ok, answer = pickle.loads(await self.process.stdout.readexactly(size))
                future = self.waiting.popleft()
                if future.cancelled():
                    continue
                if ok:
                    future.set_result(answer)
                else:
                    future.set_exception(answer)
        except asyncio.IncompleteReadError:
            code = await self.process.wait()
            failure = WorkerError(f"decoding worker {self.process.pid} exited (code {code})")
        except Exception as exc:  # pragma: no cover - an answer that does not unpickle
            failure = WorkerError(f"decoding worker {self.process.pid} answered garbage: {exc}")
        finally:
            for future in self.waiting:
                if not future.done():
                    future.set_exception(failure or WorkerError("decoding worker stopped"))
            self.waiting.clear()

    async def stop(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()  # end of input: the worker exits
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        await self.reading


def _widen(pipe: Any) -> None:
    """Make a pipe hold a whole batch: with the default 64 KiB, a batch takes dozens of turns of both
    processes, and on a busy machine each turn waits for the scheduler."""
    transport = getattr(pipe, "transport", None) or getattr(pipe, "_transport", None)
    fd = transport.get_extra_info("pipe").fileno() if transport is not None else None
    if fd is None or not hasattr(fcntl, "F_SETPIPE_SZ"):
        return
    try:
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except (OSError, ValueError):
        limit = PIPE_BYTES
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, min(PIPE_BYTES, limit))
    except OSError:  # not allowed (a lowered limit, or a pipe that many unprivileged ones already hold): as it is
        pass


def serve() -> None:
    """The worker's loop (`python -m blobwriter.decode_worker`): decode each batch read from stdin."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the reader's to handle: it ends the input
    keep_heap()  # a process that only reads
    source = sys.stdin.buffer
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else printed goes to stderr, not into the answers

    def message() -> Any:
        head = source.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return None  # the end of the input: the reader is done (or gone)
        size = _LENGTH.unpack(head)[0]
        body = source.read(size)
        return pickle.loads(body) if len(body) == size else None

    first = message()
    if first is None:
        return
    path, keys = first
    sys.path[:] = path  # the reader's, so that its task's module imports here too
    decoder = Decoder(keys)
    while (args := message()) is not None:
        try:
            reply: tuple[bool, Any] = (True, decode_batch(decoder, *args))
        except Exception as exc:
            reply = (False, exc)
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an exception that does not pickle: its text does
            data = pickle.dumps((False, RuntimeError(f"{type(reply[1]).__name__}: {exc}")))
        try:
            answers.write(_LENGTH.pack(len(data)) + data)
            answers.flush()
        except BrokenPipeError:  # the reader went away without waiting for this answer: nothing to do
            return


if __name__ == "__main__":
    serve()
