"""Entries (JSON lines) to Arrow record batches, typed the way DuckDB's `read_json` types them.

Objects become structs, arrays lists, integers BIGINT (JSON past its range), numbers DOUBLE
(integers and numbers mixed: DOUBLE), strings VARCHAR, booleans BOOLEAN. A field whose type varies
between entries (a number here, a string or an object there) becomes a JSON column holding each
value's JSON text, as `read_json` does; a field only ever null becomes VARCHAR. An object with more
than MAX_STRUCT_FIELDS distinct keys (a map of ids, not a record) is JSON too, and so is a value
nested deeper than MAX_DEPTH Parquet levels (pyarrow opens no file past 100); entries with more
than MAX_STRUCT_FIELDS distinct top-level fields get no typed columns at all. Nothing is lost that
way.

Types are inferred batch by batch and unified (`Schema.observe`); the conversion of a batch is
done by pyarrow's C++ JSON reader when the schema has no JSON column and the batch fits it, else
value by value in Python, where a value that does not fit its column (possible only for entries
the schema was not inferred from) becomes null and is counted in `Conversion.misfits`.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from itertools import accumulate
from typing import Any, Final

import orjson

from . import require

pa: Any = None
pj: Any = None

MAX_STRUCT_FIELDS: Final = 1000  # an object with more distinct keys is a map of ids, not a record: JSON
# Parquet levels a column may take (a struct adds one, a list two): pyarrow refuses to open a file past 100,
# so a value nested deeper than this is JSON.
MAX_DEPTH: Final = 64
BATCH_ENTRIES: Final = 8192
BATCH_BYTES: Final = 16 << 20
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
RAW_COLUMN: Final = "entry_json"


def arrow() -> Any:
    """pyarrow, imported on first use (it belongs to the `query` extra)."""
    global pa, pj
    if pa is None:
        pa = require("pyarrow", "this command")
        pj = require("pyarrow.json", "this command")
    return pa


def json_type() -> Any:
    return arrow().json_(arrow().string())


def is_json(t: Any) -> bool:
    return isinstance(t, arrow().BaseExtensionType) and t.extension_name == "arrow.json"


async def abatches_of(lines: AsyncIterator[bytes], entries: int = BATCH_ENTRIES,
                      size: int = BATCH_BYTES) -> AsyncIterator[list[bytes]]:
    """Group lines into batches of at most `entries` lines or about `size` bytes."""
    batch: list[bytes] = []
    held = 0
    async for line in lines:
        batch.append(line)
        held += len(line)
        if len(batch) >= entries or held >= size:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


# -- types -------------------------------------------------------------------------------------

def _normalize(t: Any) -> Any:
    """An inferred Arrow type in our vocabulary: dates and times the JSON reader guessed stay text."""
    pa = arrow()
    if pa.types.is_struct(t):
        if t.num_fields == 0:
            return json_type()
        return pa.struct([pa.field(f.name, _normalize(f.type)) for f in t])
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(_normalize(t.value_type))
    if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t):
        return pa.string()
    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_floating(t):
        return pa.float64()
    return t


def unify(a: Any, b: Any) -> Any:
    """The type that holds values of both types (JSON if none but JSON does)."""
    pa = arrow()
    if a == b:
        return a
    if pa.types.is_null(a):
        return b
    if pa.types.is_null(b):
        return a
    if is_json(a) or is_json(b):
        return json_type()
    if {a, b} == {pa.int64(), pa.float64()}:
        return pa.float64()
    if pa.types.is_struct(a) and pa.types.is_struct(b):
        merged = {f.name: f.type for f in a}
        for f in b:
            merged[f.name] = unify(merged[f.name], f.type) if f.name in merged else f.type
        if len(merged) > MAX_STRUCT_FIELDS:
            return json_type()
        return pa.struct([pa.field(name, t) for name, t in merged.items()])
    if pa.types.is_list(a) and pa.types.is_list(b):
        return pa.list_(unify(a.value_type, b.value_type))
    return json_type()


def python_type(value: Any) -> Any:
    """The type of one Python value (from orjson), for batches the C++ reader cannot type."""
    pa = arrow()
    kind = type(value)
    if value is None:
        return pa.null()
    if kind is bool:
        return pa.bool_()
    if kind is int:
        return pa.int64() if INT64_MIN <= value <= INT64_MAX else json_type()
    if kind is float:
        return pa.float64()
    if kind is str:
        return pa.string()
    if kind is list:
        item = pa.null()
        for v in value:
            item = unify(item, python_type(v))
        return pa.list_(item)
    if kind is dict:
        if not value:
            return json_type()
        if len(value) > MAX_STRUCT_FIELDS:
            return json_type()
        return pa.struct([pa.field(k, python_type(v)) for k, v in value.items()])
    return json_type()


def finalize(t: Any, depth: int = 1) -> Any:
    """The column type to use: a field only ever null is VARCHAR, an always-empty list is a list of JSON, and
    a struct or list deeper than MAX_DEPTH levels is JSON."""
    pa = arrow()
    if pa.types.is_null(t):
        return pa.string()
    if (pa.types.is_struct(t) or pa.types.is_list(t)) and depth > MAX_DEPTH:
        return json_type()
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, finalize(f.type, depth + 1)) for f in t])
    if pa.types.is_list(t):
        return pa.list_(json_type() if pa.types.is_null(t.value_type) else finalize(t.value_type, depth + 2))
    return t


def storage(t: Any) -> Any:
    """The type with JSON columns as plain strings (what pyarrow can build from Python values)."""
    pa = arrow()
    if is_json(t):
        return pa.string()
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, storage(f.type)) for f in t])
    if pa.types.is_list(t):
        return pa.list_(storage(t.value_type))
    return t


def has_json(t: Any) -> bool:
    pa = arrow()
    if is_json(t):
        return True
    if pa.types.is_struct(t):
        return any(has_json(f.type) for f in t)
    if pa.types.is_list(t):
        return has_json(t.value_type)
    return False


class Schema:
    """The entries' type, unified over every batch observed."""

    def __init__(self) -> None:
        self.type: Any = arrow().struct([])
        self.entries = 0

    def observe(self, lines: Sequence[bytes]) -> None:
        """Fold a batch's types in: the C++ reader infers them; a batch it cannot type (a field of two
        types inside the batch) is typed entry by entry."""
        if not lines:
            return
        self.entries += len(lines)
        try:
            table = _read_json(lines, None)
            # The C++ reader reads an integer beyond 64 bits as a double, rounding it: such a batch is typed
            # value by value, where it is JSON (exact), as python_type says.
            if any(_beyond_int64(column) for column in table.columns):
                raise arrow().ArrowInvalid("an integer beyond 64 bits")
            batch_type = _normalize(arrow().struct(list(table.schema)))
        except (arrow().ArrowInvalid, arrow().ArrowNotImplementedError):
            batch_type = arrow().struct([])
            for line in lines:
                batch_type = unify(batch_type, python_type(orjson.loads(line)))
        self.type = unify(self.type, batch_type)

    @property
    def too_wide(self) -> bool:
        """The entries have more than MAX_STRUCT_FIELDS distinct top-level fields: a map, not records, so
        they get no typed columns (unify made the top level JSON, as it does such an object inside)."""
        return is_json(self.type)

    def arrow_schema(self, *, raw: bool = False) -> Any:
        """The Arrow schema of the batches: one column per top-level field (none if too_wide), plus entry_json
        if raw."""
        pa = arrow()
        top = [] if self.too_wide else self.type
        fields = [pa.field(f.name, finalize(f.type)) for f in top if not (raw and f.name == RAW_COLUMN)]
        if raw:
            fields.append(pa.field(RAW_COLUMN, json_type()))
        return pa.schema(fields)


def _beyond_int64(values: Any) -> bool:
    """Whether a column the C++ reader inferred holds a double of an integer's magnitude past int64 (or, to
    be safe, any number that large)."""
    pa = arrow()
    t = values.type
    if pa.types.is_struct(t):
        return any(_beyond_int64(pa.chunked_array([chunk.field(i) for chunk in values.chunks], type=f.type))
                   for i, f in enumerate(t))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _beyond_int64(pa.chunked_array([chunk.flatten() for chunk in values.chunks], type=t.value_type))
    if pa.types.is_floating(t):
        import pyarrow.compute as pc

        largest = pc.max(pc.abs(values)).as_py()
        return largest is not None and largest >= 2.0**63
    return False


def _read_json(lines: Sequence[bytes], schema: Any) -> Any:
    options = (pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error") if schema is not None
               else pj.ParseOptions())
    # Blocks of about a megabyte are parsed in parallel; each must hold the longest line whole.
    block = max(1 << 20, max(len(x) for x in lines) + 1)
    return pj.read_json(io.BytesIO(b"\n".join(lines)), parse_options=options,
                        read_options=pj.ReadOptions(block_size=block))


class Conversion:
    """Converts batches of lines to record batches of one fixed schema, counting what did not fit."""

    def __init__(self, schema: Any, *, raw: bool = False) -> None:
        pa = arrow()
        self.schema = schema
        self.raw = raw
        typed = [f for f in schema if not (raw and f.name == RAW_COLUMN)]
        self._typed = pa.schema(typed)
        self._struct = pa.struct(typed)
        self._storage = storage(self._struct)
        self._fast = not has_json(self._struct)
        self.misfits: Counter[str] = Counter()  # field path -> values that did not fit (now null)
        self.unknown: Counter[str] = Counter()  # field path -> values of fields the schema lacks

    def convert(self, lines: Sequence[bytes]) -> Any:
        pa = arrow()
        columns: list[Any] = []
        if self._typed:
            table = None
            if self._fast:
                try:
                    table = _read_json(lines, self._typed)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    table = None
            if table is not None and table.num_rows == len(lines):
                columns = [table.column(i).combine_chunks() if table.column(i).num_chunks != 1
                           else table.column(i).chunk(0) for i in range(table.num_columns)]
                columns = [c.cast(f.type) if c.type != f.type else c for c, f in zip(columns, self._typed, strict=True)]
            else:
                values = [self._coerce_entry(orjson.loads(line)) for line in lines]
                array = pa.array(values, type=self._storage)
                if array.type != self._struct:
                    array = array.cast(self._struct)
                columns = [array.field(i) for i in range(self._struct.num_fields)]
        if self.raw:
            columns.append(pa.ExtensionArray.from_storage(json_type(), raw_strings(lines)))
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)

    def _coerce_entry(self, entry: Any) -> dict[str, Any]:
        if type(entry) is not dict:
            self.misfits["(entry)"] += 1
            return {}
        return self._coerce_struct(entry, self._struct, "")

    def _coerce_struct(self, value: dict[str, Any], t: Any, path: str) -> dict[str, Any]:
        out = {}
        for f in t:
            v = value.get(f.name)
            out[f.name] = None if v is None else self._coerce(v, f.type, path + f.name)
        if len(value) != len(out) or any(key not in out for key in value):
            for key in value:
                if key not in out and not (not path and self.raw and key == RAW_COLUMN):
                    self.unknown[path + key] += 1
        return out

    def _coerce(self, value: Any, t: Any, path: str) -> Any:
        kind = type(value)
        if is_json(t):
            return orjson.dumps(value).decode()
        if pa.types.is_string(t):
            return value if kind is str else orjson.dumps(value).decode()  # VARCHAR takes any value's text
        if pa.types.is_int64(t):
            if kind is int and INT64_MIN <= value <= INT64_MAX:
                return value
        elif pa.types.is_float64(t):
            if kind is float or kind is int:
                return float(value)
        elif pa.types.is_boolean(t):
            if kind is bool:
                return value
        elif pa.types.is_struct(t):
            if kind is dict:
                return self._coerce_struct(value, t, path + ".")
        elif pa.types.is_list(t):
            if kind is list:
                item = t.value_type
                return [None if v is None else self._coerce(v, item, path + "[]") for v in value]
        self.misfits[path] += 1
        return None


def raw_strings(lines: Sequence[bytes]) -> Any:
    """The lines as one Arrow string array, built from their bytes without decoding each."""
    pa = arrow()
    offsets = pa.array([0, *accumulate(len(line) for line in lines)], type=pa.int32())
    return pa.StringArray.from_buffers(len(lines), offsets.buffers()[1], pa.py_buffer(b"".join(lines)))
