"""What the privacy controls cost: admission time per entry without and with each control.

    .venv/bin/python bench/privacy.py [--rounds N] [--data PATH]     (or: python -m bench.privacy)

Admits the 2,000 API-call entries of tests/data/api-calls-sample.jsonl.gz with the writer's own
admission (`blobwriter.entries.Admission.prepare`: timestamp check, controls, `orjson.dumps`) under
each configuration, side by side in one run, and prints JSON: the least CPU time per entry over
`rounds` rounds (`time.process_time`; the least is the run least disturbed by other work on the
machine), its ratio to no control, and the bytes each entry is stored as (before compression).
"from_python" is the same without a control, for values handed to `LogWriter.write` (which are
also searched for NaN and infinity; values parsed from JSON text cannot hold them).
Standalone: not part of `make bench`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's directory comes first on sys.path, and bench/http.py would shadow the
# standard library's http (which prometheus_client imports): look it up from the repository instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import orjson  # noqa: E402

from blobwriter.entries import Admission, Rules  # noqa: E402
from blobwriter.privacy import Privacy  # noqa: E402

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "api-calls-sample.jsonl.gz"
MAX_ENTRY_BYTES = 1 << 20

CONFIGURATIONS: dict[str, tuple[Privacy, bool]] = {  # name: (controls, from JSON text)
    "none": (Privacy(), True),
    "from_python": (Privacy(), False),
    "metadata_only": (Privacy(metadata_only=True), True),
    "drop": (Privacy(drop=("user", "request.messages.*.content", "response.choices.*.message.content")), True),
    "mask": (Privacy(mask=("user", "request.messages.*.content", "response.choices.*.message.content")), True),
    "truncate_256": (Privacy(truncate_bytes=256), True),
    "all": (Privacy(drop=("user",), mask=("request.messages.*.content",), truncate_bytes=256), True),
}


def measure(entries: list[dict[str, Any]], privacy: Privacy, from_json: bool, rounds: int) -> tuple[float, float]:
    """(least CPU seconds per entry, mean stored bytes per entry) of admitting every entry."""
    rules = Rules(MAX_ENTRY_BYTES, privacy=privacy)
    best = float("inf")
    stored = 0
    for _ in range(rounds):
        admission = Admission(rules, check_numbers=not from_json)
        prepare = admission.prepare
        start = time.process_time()
        lines = [prepare(entry).line for entry in entries]
        best = min(best, time.process_time() - start)
        stored = sum(len(line) for line in lines)
    return best / len(entries), stored / len(entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="rounds per configuration (default 9)")
    parser.add_argument("--data", type=Path, default=SAMPLE, help="gzipped JSON Lines of entries")
    args = parser.parse_args()
    with gzip.open(args.data) as handle:
        entries = [orjson.loads(line) for line in handle]
    results = {name: measure(entries, privacy, from_json, args.rounds)
               for name, (privacy, from_json) in CONFIGURATIONS.items()}
    base = results["none"][0]
    print(json.dumps({
        "entries": len(entries),
        "rounds": args.rounds,
        "us_per_entry": {name: round(seconds * 1e6, 2) for name, (seconds, _) in results.items()},
        "ratio_to_none": {name: round(seconds / base, 2) for name, (seconds, _) in results.items()},
        "stored_bytes_per_entry": {name: round(size) for name, (_, size) in results.items()},
        "configurations": {name: {"drop": list(p.drop), "mask": list(p.mask), "truncate_bytes": p.truncate_bytes,
                                  "metadata_only": p.metadata_only, "from_json": from_json}
                           for name, (p, from_json) in CONFIGURATIONS.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
