"""The `blobwriter` command: keygen, read, verify, serve, and stats, sql, export (blobwriter.query)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from datetime import date as Date

from . import __version__
from .config import Settings, load_settings
from .decoding import CountEntries, keep_heap
from .errors import BlobwriterError
from .keys import keygen
from .query import cli as query_cli
from .query.output import printable
from .query.progress import Progress, tracked_results
from .reader import Reader, ReadReport, date_range, nothing_found, unknown_keys_error
from .store import open_store

EXIT_OK, EXIT_DAMAGED, EXIT_USAGE = 0, 1, 2
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _iso_date(text: str) -> Date:
    """A date in YYYY-MM-DD form only: Python 3.11's fromisoformat also takes 20261124 and week dates
    (2026-W48 would silently mean that week's Monday)."""
    try:
        if not _DATE.fullmatch(text):
            raise ValueError(text)
        return Date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date in YYYY-MM-DD form") from None


def _port(text: str) -> int:
    """A TCP port, 0 (any free port: `serve` logs the one it got) to 65535."""
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blobwriter",
        description="Batched, encrypted logging to Azure append blobs (or a directory).",
        epilog="Settings come from BLOBWRITER_* environment variables and the YAML file given by "
               "--config or BLOBWRITER_CONFIG, under its 'logging:' key (see README, 'Configuration').",
    )
    parser.add_argument("--version", action="version", version=f"blobwriter {__version__}")
    parser.add_argument("--config", metavar="PATH", help="YAML config file (default: $BLOBWRITER_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("keygen", help="print a new random base64 32-byte encryption key", description=(
        "Print a new random base64 32-byte encryption key (for BLOBWRITER_ENCRYPTION_KEY, or previous_keys "
        "when rotating). Keep it in a secret store: without it the logs cannot be read."))

    for name, text in (("read", "print a date range's entries as JSON Lines, each exactly once"),
                       ("verify", "check every frame of a date range; exit 1 if any is damaged")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--date", required=True, type=_iso_date, metavar="YYYY-MM-DD", help="first UTC date")
        sub.add_argument("--until", type=_iso_date, metavar="YYYY-MM-DD", help="last UTC date (inclusive)")
        if name == "verify":
            sub.add_argument("--json", action="store_true", help="print the report as JSON")

    query_cli.add_commands(commands, _iso_date)  # stats, sql, export

    serve = commands.add_parser("serve", help="serve the HTTP API locally (uvicorn)",
                                description="Serve POST /api/logs, GET /api/health and GET /api/metrics.")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=7071,
                       help="port (default: 7071, like `func start`; 0: any free port, logged at start)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--insecure-no-key", action="store_true",
                       help="listen beyond loopback without BLOBWRITER_API_KEY (anyone who can reach the "
                            "address can write entries); refused otherwise")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING
    if args.command == "serve":  # --log-level sets blobwriter's own loggers too, not only uvicorn's
        level = getattr(logging, args.log_level.upper())
    logging.basicConfig(level=logging.DEBUG if args.verbose else level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command == "keygen":
        print(keygen())
        return EXIT_OK
    try:
        settings = load_settings(args.config)
        if args.command == "serve":
            from .server import serve

            serve(settings, host=args.host, port=args.port, log_level=args.log_level,
                  insecure_no_key=args.insecure_no_key)
            return EXIT_OK
        keep_heap()  # every other command reads (read, verify, stats, sql, export)
        if args.command in query_cli.COMMANDS:
            return query_cli.run(args, settings)
        if not settings.keys:
            settings.require("encryption_key")
        dates = date_range(args.date, args.until)
        try:
            return asyncio.run(_read(settings, dates, verify=args.command == "verify",
                                     as_json=getattr(args, "json", False)))
        except KeyboardInterrupt:
            return query_cli.Interrupted(
                "the range was not verified to its end: no verdict" if args.command == "verify"
                else "the entries printed are only part of the range").say()
    except (BlobwriterError, ValueError) as exc:
        print(f"blobwriter: error: {printable(str(exc), lines=True)}", file=sys.stderr)  # DuckDB's errors quote entries
        return EXIT_USAGE
    except KeyboardInterrupt:
        return query_cli.EXIT_INTERRUPTED


async def _read(settings: Settings, dates: list[str], *, verify: bool, as_json: bool) -> int:
    store = open_store(settings)
    reader = Reader(store, settings.keys, check_index=verify, id_field=settings.id_field)
    out = sys.stdout.buffer
    progress = Progress("verify", dates, enabled=None if verify else False)  # a bar on a terminal
    code = EXIT_OK  # the verdict, once the range is read to its end
    try:
        try:
            if verify:  # decoding is the work: the entries need not leave the worker processes
                async for _ in tracked_results(reader, dates, CountEntries(), progress=progress):
                    pass
            else:
                async for line in reader.entries(dates):
                    out.write(line + b"\n")
            out.flush()
        finally:
            progress.close()
            await reader.close()
            await store.close()
        report = reader.report
        if report.only_unknown_keys:
            raise unknown_keys_error(report.problems, settings.named_keys)
        code = EXIT_OK if report.ok else EXIT_DAMAGED
        _print_report(report, dates, verbose=verify, as_json=as_json)  # verify's on stdout
        if report.parts == 0 and not verify:  # verify says so in its report ("0 parts")
            print(f"blobwriter: note: {nothing_found(dates, store)}", file=sys.stderr)
    except BrokenPipeError:  # the consumer stopped reading (`| head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code


def _print_report(report: ReadReport, dates: list[str], *, verbose: bool, as_json: bool) -> None:
    """verify prints its report on stdout; read reports only damage, on stderr."""
    if as_json:
        print(json.dumps({
            "dates": [dates[0], dates[-1]], "parts": report.parts, "frames": report.frames,
            "entries": report.entries, "duplicates_dropped": report.duplicates, "bytes": report.bytes,
            "index_frames": report.index_frames, "unindexed_frames": report.unindexed,
            "open_chains": report.open_chains, "id_duplicates_dropped": report.id_duplicates,
            "problems": [{"blob": p.blob, "offset": p.offset, "message": p.message} for p in report.problems],
            "ok": report.ok,
        }, indent=2))
        return
    stream = sys.stdout if verbose else sys.stderr
    for problem in report.problems:
        print(f"DAMAGED {problem}", file=stream)
    if verbose:
        print(f"{dates[0]}..{dates[-1]}: {report.parts} parts, {report.frames} frames, {report.entries} entries, "
              f"{report.duplicates} duplicate frames dropped, {len(report.problems)} damaged; "
              f"{report.index_frames} index frames, {report.unindexed} frames not yet indexed, "
              f"{report.open_chains} writers without a final index"
              + (f"; {report.id_duplicates} entries dropped as repeated ids" if report.id_duplicates else ""),
              file=stream)
        print("OK" if report.ok else "FAILED", file=stream)
    elif report.problems:
        print(f"blobwriter: {len(report.problems)} damaged frame(s) skipped; run `blobwriter verify` for details",
              file=stream)
