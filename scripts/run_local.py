"""`make run`: Azurite plus `blobwriter serve` on 127.0.0.1:7071, for a laptop. Ctrl-C stops both.

Azurite keeps its data under .local/azurite (git-ignored). If no encryption key is configured
(BLOBWRITER_ENCRYPTION_KEY or a config file), a development key is made once, kept in
.local/dev.key (git-ignored) and printed the first time.

Other ports: BLOBWRITER_PORT (the API, default 7071), BLOBWRITER_HOST (default 127.0.0.1) and
AZURITE_BLOB_PORT (default 10000); the server, and the read command printed, use that Azurite.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devlocal import (
    AZURITE_ACCOUNT,
    AZURITE_ACCOUNT_KEY,
    ROOT,
    dev_key,
    port_open,
    run_until_interrupted,
    wait_for_ports,
)

LOCAL = ROOT / ".local"
KEY_FILE = LOCAL / "dev.key"
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
DEFAULT_AZURITE_PORT = 10000  # what UseDevelopmentStorage=true points at
AZURITE_PORT = int(os.environ.get("AZURITE_BLOB_PORT", str(DEFAULT_AZURITE_PORT)))
HOST = os.environ.get("BLOBWRITER_HOST", "127.0.0.1")
PORT = int(os.environ.get("BLOBWRITER_PORT", "7071"))


def local_storage(azurite_port: int) -> str:
    """The connection string of the Azurite this starts: the SDK's shorthand on Azurite's default port, else
    the same well-known development account at `azurite_port` (the shorthand always means 10000)."""
    if azurite_port == DEFAULT_AZURITE_PORT:
        return "UseDevelopmentStorage=true"
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{azurite_port}/{AZURITE_ACCOUNT}")


def configured_or_dev_key(env: dict[str, str]) -> str | None:
    """None if a key is configured (BLOBWRITER_ENCRYPTION_KEY or a config file), else the development key."""
    if env.get("BLOBWRITER_ENCRYPTION_KEY") or env.get("BLOBWRITER_CONFIG"):
        return None
    key, made = dev_key(KEY_FILE)
    if made:
        print(f"Made a development encryption key (kept in {KEY_FILE.relative_to(ROOT)}, git-ignored):\n  {key}\n"
              "Logs written with it can only be read with it. Use `blobwriter keygen` and a secret store in "
              "production.\n")
    return key


def main() -> int:
    LOCAL.mkdir(exist_ok=True)
    env = dict(os.environ)
    key = configured_or_dev_key(env)
    if key:
        env["BLOBWRITER_ENCRYPTION_KEY"] = key
    storage_env = ""  # a BLOBWRITER_STORAGE of the caller's is in their shell already
    if "BLOBWRITER_STORAGE" not in env:
        env["BLOBWRITER_STORAGE"] = local_storage(AZURITE_PORT)
        storage_env = f"BLOBWRITER_STORAGE={shlex.quote(env['BLOBWRITER_STORAGE'])} "

    azurite = None
    if port_open(AZURITE_PORT):
        print(f"Using the Azurite (or other service) already listening on 127.0.0.1:{AZURITE_PORT}")
    else:
        azurite = subprocess.Popen(
            [str(AZURITE), "--location", str(LOCAL / "azurite"), "--blobHost", "127.0.0.1",
             "--blobPort", str(AZURITE_PORT), "--skipApiVersionCheck", "--silent", "--disableTelemetry"],
            start_new_session=True,
        )
        if not wait_for_ports(azurite, [AZURITE_PORT]):
            print("Azurite did not start; is port", AZURITE_PORT, "free?", file=sys.stderr)
            return 1
        print(f"Azurite is listening on 127.0.0.1:{AZURITE_PORT} (data in .local/azurite)")

    blobwriter = [sys.executable, "-m", "blobwriter"]
    server = subprocess.Popen([*blobwriter, "serve", "--host", HOST, "--port", str(PORT)], env=env,
                              start_new_session=True)
    wait_for_ports(server, [PORT])  # if it exits instead, its own message says why
    today = time.strftime("%Y-%m-%d", time.gmtime())
    key_env = "BLOBWRITER_ENCRYPTION_KEY=$(cat .local/dev.key) " if key else ""
    if server.poll() is None:
        print(f"""
blobwriter is serving on http://{HOST}:{PORT}  (Ctrl-C stops it and Azurite)

  Post an entry:
    curl -s -X POST http://{HOST}:{PORT}/api/logs -H 'content-type: application/json' \\
         -d '{{"user": "alice@contoso.com", "deployment": "gpt-4o", "tokens": 42, "cost_eur": 0.0021}}'
  Read today's entries back (they are written within batch_timeout, 1 s by default):
    {key_env}{storage_env}.venv/bin/blobwriter read --date {today}
  Health and metrics:
    curl -s http://{HOST}:{PORT}/api/health ; curl -s http://{HOST}:{PORT}/api/metrics
""", flush=True)

    stops = [(server, lambda: server.send_signal(signal.SIGINT), 70.0)]
    if azurite is not None:
        stops.append((azurite, azurite.terminate, 10.0))
    return run_until_interrupted(server, "Stopping blobwriter (flushing queued entries) and Azurite...", stops)


if __name__ == "__main__":
    sys.exit(main())
