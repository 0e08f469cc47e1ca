"""`make func-azurite`: the Azurite services the Functions host needs, for `func start`. Ctrl-C stops them.

Core Tools (`func start`) keeps its own state (keys, locks) in AzureWebJobsStorage, which uses
blob, queue and table storage; blobwriter itself writes to blob storage (BLOBWRITER_STORAGE).
This starts one Azurite with exactly those three services on 127.0.0.1:10100/10101/10102: not
the 10000 of `make run`'s Azurite, so both can run at once (and `func start --port 7072` does
not take 7071 from `make run` either). Data is kept in .local/azurite-func (git-ignored).

If local.settings.json does not exist, it is made from local.settings.json.example with the
development key of `make run` (.local/dev.key, made once) and these ports. An existing
local.settings.json is never changed; a warning says if it points elsewhere.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devlocal import ROOT, dev_key, port_open, run_until_interrupted, wait_for_ports

LOCAL = ROOT / ".local"
KEY_FILE = LOCAL / "dev.key"
AZURITE = ROOT / "node_modules" / ".bin" / "azurite"
EXAMPLE = ROOT / "local.settings.json.example"
SETTINGS = ROOT / "local.settings.json"
DEFAULT_PORTS = {"blob": 10100, "queue": 10101, "table": 10102}
FUNC_PORT = 7072  # `make run` serves on 7071, Core Tools' default


def with_ports(connection_string: str, ports: dict[str, int]) -> str:
    """The example's Azurite connection string, pointed at `ports` (127.0.0.1)."""
    parts = []
    for part in connection_string.split(";"):
        name, _, _ = part.partition("=")
        service = name.removesuffix("Endpoint").lower()
        if name.endswith("Endpoint") and service in ports:
            part = f"{name}=http://127.0.0.1:{ports[service]}/devstoreaccount1"
        parts.append(part)
    return ";".join(parts)


def ensure_local_settings(ports: dict[str, int]) -> None:
    example = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    wanted = with_ports(example["Values"]["AzureWebJobsStorage"], ports)
    if SETTINGS.exists():
        values = json.loads(SETTINGS.read_text(encoding="utf-8")).get("Values", {})
        if values.get("AzureWebJobsStorage") != wanted:
            print(f"Note: {SETTINGS.name} exists and its AzureWebJobsStorage is not this Azurite; left as it is.\n"
                  f"  This Azurite: {wanted}", file=sys.stderr)
        return
    values = example["Values"]
    values["AzureWebJobsStorage"] = wanted
    values["BLOBWRITER_STORAGE"] = with_ports(values["BLOBWRITER_STORAGE"], ports)
    values["BLOBWRITER_ENCRYPTION_KEY"] = dev_key(KEY_FILE)[0]
    SETTINGS.write_text(json.dumps(example, indent=2) + "\n", encoding="utf-8")
    SETTINGS.chmod(0o600)
    print(f"Made {SETTINGS.name} from {EXAMPLE.name} with the development key of `make run` (.local/dev.key).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for service, port in DEFAULT_PORTS.items():
        parser.add_argument(f"--{service}-port", type=int, default=port, help=f"default {port}")
    parser.add_argument("--location", type=Path, default=LOCAL / "azurite-func", help="Azurite's data folder")
    parser.add_argument("--no-local-settings", action="store_true",
                        help="do not make local.settings.json when it is missing")
    args = parser.parse_args(argv)
    ports = {"blob": args.blob_port, "queue": args.queue_port, "table": args.table_port}

    if not AZURITE.exists():
        print("Azurite is not installed: run `make install` (npm ci).", file=sys.stderr)
        return 1
    taken = [f"{service} {port}" for service, port in ports.items() if port_open(port)]
    if taken:
        print(f"Port(s) already in use on 127.0.0.1: {', '.join(taken)}. Another Azurite? Stop it, or pass "
              "--blob-port/--queue-port/--table-port (and point local.settings.json at them).", file=sys.stderr)
        return 1
    if not args.no_local_settings:
        ensure_local_settings(ports)

    args.location.mkdir(parents=True, exist_ok=True)
    command = [str(AZURITE), "--location", str(args.location), "--skipApiVersionCheck", "--silent",
               "--disableTelemetry"]
    for service, port in ports.items():
        command += [f"--{service}Host", "127.0.0.1", f"--{service}Port", str(port)]
    azurite = subprocess.Popen(command, start_new_session=True)
    if not wait_for_ports(azurite, list(ports.values())):
        print("Azurite did not start (see its output above).", file=sys.stderr)
        if azurite.poll() is None:
            azurite.terminate()
        return 1
    print(f"""
Azurite for the Functions host is listening on 127.0.0.1: blob {ports['blob']}, queue {ports['queue']}, \
table {ports['table']} (data in {args.location}). Ctrl-C stops it.

  In another terminal, with the venv active (the Python worker imports blobwriter and its packages from it):
    . .venv/bin/activate
    func start --port {FUNC_PORT}
  Then post an entry (Core Tools does not check function keys locally):
    curl -s -X POST http://127.0.0.1:{FUNC_PORT}/api/logs -H 'content-type: application/json' -d '{{"user": "alice"}}'
""", flush=True)

    return run_until_interrupted(azurite, "Stopping Azurite...", [(azurite, azurite.terminate, 10.0)])


if __name__ == "__main__":
    sys.exit(main())
