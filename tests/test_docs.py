"""The docs say what the code does: every setting in the README, the frame layout in FORMAT.md."""

from __future__ import annotations

import argparse
import re

from blobwriter import codec, keys
from blobwriter.cli import build_parser
from blobwriter.config import FIELDS
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
FORMAT = (ROOT / "docs" / "FORMAT.md").read_text()


def test_readme_documents_every_setting_with_its_default() -> None:
    for f in FIELDS:
        row = next((line for line in README.splitlines() if line.startswith(f"| `{f.name}` |")), None)
        assert row is not None, f"README configuration table lacks {f.name}"
        assert f"`{f.env}`" in row
        if isinstance(f.default, int | float) and not isinstance(f.default, bool):
            assert str(f.default) in row, f"README default of {f.name} is not {f.default}"


def test_format_doc_matches_the_header_layout() -> None:
    assert codec.HEADER_SIZE == 68 and "68-byte header" in FORMAT
    assert codec.MAGIC.decode() in FORMAT
    rows = re.findall(r"^\| (\d+) \| (\d+|n) \| ([A-Za-z ]+) \|", FORMAT, flags=re.M)
    sizes = [int(size) for _, size, _ in rows if size != "n"]
    assert sum(sizes) == codec.HEADER_SIZE
    offsets = [int(offset) for offset, _, _ in rows]
    assert offsets == sorted(offsets) and offsets[-1] == codec.HEADER_SIZE
    assert keys.KEY_ID_CONTEXT.rstrip(b"\0").decode() in FORMAT
    assert f"`0x{codec.FLAG_GZIP:02x}`" in FORMAT and f"`0x{codec.FLAG_INDEX:02x}`" in FORMAT


def test_readme_names_the_ports_make_run_takes() -> None:
    # scripts/run_local.py reads these; a new user whose 7071 or 10000 is taken needs to know them.
    script = (ROOT / "scripts" / "run_local.py").read_text()
    variables = set(re.findall(r'os\.environ\.get\("(\w+)"', script))
    assert variables == {"AZURITE_BLOB_PORT", "BLOBWRITER_HOST", "BLOBWRITER_PORT"}
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    for name in sorted(variables):
        assert re.search(rf"\b{name}=", quick_start), f"README Quick start does not name {name}"


def test_readme_command_line_names_every_option() -> None:
    # `sql --sample-size/--memory-limit` and `export --rows-per-file` were missing from the summary.
    block = README.split("## Command line", 1)[1].split("```", 2)[1]
    usages: dict[str, str] = {}
    command = ""
    for line in block.splitlines():
        if match := re.match(r"blobwriter (\w+)\b", line):
            command = match.group(1)
        usages[command] = usages.get(command, "") + line
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        for option in (o for a in sub._actions for o in a.option_strings if o.startswith("--") and o != "--help"):
            assert option in usages[name], f"README Command line: blobwriter {name} lacks {option}"
    for action in parser._actions:
        if action.option_strings and "--help" not in action.option_strings:
            assert any(o in block for o in action.option_strings), f"README Command line lacks {action.option_strings}"
