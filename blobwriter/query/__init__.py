"""Answers from the encrypted logs: `blobwriter stats`, `sql` and `export`, and the scheduled export.

Everything here reads through the public Reader (each entry once, damaged frames reported and
skipped). DuckDB, pyarrow and tqdm come with the optional extra (`pip install blobwriter[query]`);
modules import them lazily, so `blobwriter --help` and the Functions app work without it.
"""

from __future__ import annotations

from types import ModuleType

from ..errors import ConfigError

EXTRA_HINT = "install the query extra: pip install 'blobwriter[query]'"


class MissingExtraError(ConfigError):
    """A command needs a package of the `query` extra that is not installed."""


def require(module: str, feature: str) -> ModuleType:
    """Import `module` (duckdb, pyarrow, ...) or fail with one line saying how to get it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{feature} needs {module.split('.')[0]}: {EXTRA_HINT}") from None
