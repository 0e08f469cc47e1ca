"""The README's example script runs as shown: 10,000 entries through LogWriter to Azurite and back."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT, connection_string


def test_write_and_read_example(azurite: str) -> None:
    env = {**os.environ, "BLOBWRITER_STORAGE": connection_string(azurite)}
    result = subprocess.run([sys.executable, "examples/write_and_read.py"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "read back 10000 entries, each once" in result.stdout
