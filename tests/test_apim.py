"""The API Management kit (examples/apim/): what can be checked without API Management.

The fragments' C# expressions run only in the gateway. API Management reads a policy as XML
after setting its expressions (`@(...)`, `@{...}`) aside, so this does the same: it finds each
expression's end (balanced brackets, C# string and character literals skipped), replaces it
with a placeholder, and parses the rest with a real XML parser. Then it checks the structure,
the one-way request, the order of variables, and the entry the policy builds: its fields are
exactly those of the API-call data set, its timestamp format is RFC 3339, and entries of that
shape go through blobwriter's real HTTP API into Azurite and come back unchanged.
"""

from __future__ import annotations

import datetime
import gzip
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from blobwriter.api import create_app
from blobwriter.config import FIELDS, Settings
from blobwriter.reader import Reader
from blobwriter.store import open_store

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "examples" / "apim"
CAPTURE, LOG, API_POLICY = KIT / "blobwriter-capture.xml", KIT / "blobwriter-log.xml", KIT / "api-policy.xml"
# The API-call data set (the same file as ../shared/data/api-calls.jsonl.gz).
DATA_SET = ROOT / "bench" / "data" / "api-calls.jsonl.gz"
NAMED_VALUES = {"blobwriter-ingest-url", "blobwriter-function-key", "blobwriter-prices-eur"}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


# --------------------------------------------------------------------------------------------
# Reading a policy the way API Management does
# --------------------------------------------------------------------------------------------


def _expression_end(text: str, start: int) -> int:
    """Index just past the expression that opens at text[start] ('@(' or '@{')."""
    opening = text[start + 1]
    closing = ")" if opening == "(" else "}"
    depth, i = 0, start + 1
    while i < len(text):
        char = text[i]
        if char == '"':  # a C# string; @"..." verbatim strings double their quotes
            verbatim = text[i - 1] == "@"
            i += 1
            while i < len(text):
                if verbatim and text.startswith('""', i):
                    i += 2
                    continue
                if not verbatim and text[i] == "\\":
                    i += 2
                    continue
                if text[i] == '"':
                    break
                i += 1
        elif char == "'":  # a C# character literal
            i += 3 if text[i + 1] != "\\" else 4
            continue
        elif char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise AssertionError(f"unbalanced policy expression starting: {text[start:start + 80]!r}")


def read_policy(path: Path) -> tuple[ET.Element, dict[str, str]]:
    """The policy's XML tree with every expression replaced by `__EXPR_n__`, and the expressions."""
    text = path.read_text(encoding="utf-8")
    expressions: dict[str, str] = {}
    out, i = [], 0
    while True:
        match = re.compile(r'(?<=")@[({]|(?<=>)\s*@[({]').search(text, i)
        if match is None:
            out.append(text[i:])
            break
        start = text.index("@", match.start())
        end = _expression_end(text, start)
        following = text[end:end + 1]
        assert following in ('"', "<") or text[end:].lstrip().startswith("<"), (
            f"{path.name}: text after the expression {text[start:start + 60]!r}: {text[end:end + 20]!r}"
        )
        name = f"__EXPR_{len(expressions)}__"
        expressions[name] = text[start + 2:end - 1]
        out.append(text[i:start])
        out.append(name)
        i = end
    return ET.fromstring("".join(out)), expressions


def _set_variables(root: ET.Element, expressions: dict[str, str]) -> dict[str, str]:
    return {e.get("name", ""): expressions.get(e.get("value", ""), e.get("value", ""))
            for e in root.iter("set-variable")}


def _entry_expression() -> str:
    root, expressions = read_policy(LOG)
    return _set_variables(root, expressions)["blobwriter-entry"]


def _properties(expression: str) -> list[str]:
    """The JProperty names of the object an expression returns (the last `new JObject(...)` built)."""
    start = expression.index("var entry = new JObject(") if "var entry = new JObject(" in expression else 0
    return re.findall(r'new JProperty\("([^"]+)"', expression[start:])


def _data_set(limit: int | None = None) -> list[dict[str, Any]]:
    entries = []
    with gzip.open(DATA_SET, "rt", encoding="utf-8") as f:
        for line in f:
            entries.append(json.loads(line))
            if limit and len(entries) == limit:
                break
    return entries


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------


def test_fragments_and_policy_are_well_formed() -> None:
    capture, _ = read_policy(CAPTURE)
    log, log_expressions = read_policy(LOG)
    policy, _ = read_policy(API_POLICY)
    assert capture.tag == "fragment" and log.tag == "fragment" and policy.tag == "policies"
    assert len(log_expressions) >= 10, "the log fragment's expressions were found"

    def includes(section: str) -> list[str]:
        element = policy.find(section)
        assert element is not None, section
        return [child.tag if child.tag != "include-fragment" else child.get("fragment-id", "") for child in element]

    assert includes("inbound") == ["blobwriter-capture", "base"], "capture the body before anything changes it"
    assert includes("outbound") == ["base", "blobwriter-log"], "log the answer as the caller gets it"
    assert includes("on-error") == ["base", "blobwriter-log"], "gateway errors are logged too"


def test_request_body_is_kept_for_the_backend() -> None:
    root, expressions = read_policy(CAPTURE)
    variables = _set_variables(root, expressions)
    assert set(variables) == {"blobwriter-request"}
    assert "context.Request.Body" in variables["blobwriter-request"]
    assert "preserveContent: true" in variables["blobwriter-request"]
    response = _set_variables(*read_policy(LOG))["blobwriter-response"]
    assert "context.Response.Body" in response and "preserveContent: true" in response
    assert "blobwriter-stream" in response, "a streamed answer must not be buffered"


def test_the_entry_goes_fire_and_forget_with_a_key_from_a_named_value() -> None:
    root, expressions = read_policy(LOG)
    [send] = root.iter("send-one-way-request")
    assert list(root)[-1] is send, "sending is the fragment's last step"
    assert send.get("mode") == "new"
    assert 0 < int(send.get("timeout", "60")) <= 60
    assert (send.findtext("set-url") or "").strip() == "{{blobwriter-ingest-url}}"
    assert (send.findtext("set-method") or "").strip() == "POST"
    headers = {h.get("name", "").lower(): (h.findtext("value") or "").strip() for h in send.iter("set-header")}
    assert headers == {"content-type": "application/json", "x-functions-key": "{{blobwriter-function-key}}"}
    body = expressions[(send.findtext("set-body") or "").strip()]
    assert '"blobwriter-entry"' in body


def test_every_variable_is_set_before_it_is_read() -> None:
    """In the order the gateway runs them: the capture fragment, then the log fragment's steps."""
    known: set[str] = set()
    for path in (CAPTURE, LOG):
        root, expressions = read_policy(path)
        for element in root.iter():
            used = " ".join(expressions.get(value.strip(), "") for value in [*element.attrib.values(),
                                                                            element.text or ""])
            for name in re.findall(r'GetValueOrDefault<[\w.]+>\("(blobwriter-[\w-]+)"', used):
                assert name in known, f"{path.name}: {element.tag} reads {name} before it is set"
            for attribute in ("name", "variable-name"):
                if element.tag in ("set-variable", "cache-lookup-value") and element.get(attribute):
                    known.add(element.get(attribute, ""))
    assert {"blobwriter-request", "blobwriter-entry", "blobwriter-cumulative-before"} <= known


def test_named_values_are_the_documented_ones() -> None:
    used = set()
    for path in (CAPTURE, LOG, API_POLICY):
        used |= set(re.findall(r"\{\{([\w-]+)\}\}", path.read_text(encoding="utf-8")))
    assert used == NAMED_VALUES
    readme = (KIT / "README.md").read_text(encoding="utf-8")
    for name in NAMED_VALUES:
        assert f"--named-value-id {name}" in readme, f"README.md does not show how to create {name}"


# --------------------------------------------------------------------------------------------
# The entry
# --------------------------------------------------------------------------------------------


def test_entry_has_exactly_the_fields_of_the_data_set() -> None:
    sample = _data_set(limit=2000)
    fields = list(sample[0])
    assert all(list(e) == fields for e in sample), "the data set has one shape"
    entry = _properties(_entry_expression())
    assert entry == fields, f"policy builds {entry}, the data set has {fields}"
    tokens = _properties(_set_variables(*read_policy(LOG))["blobwriter-tokens"])
    assert tokens == list(next(e["tokens"] for e in sample if e["tokens"]))
    assert "entry.ToString(Newtonsoft.Json.Formatting.None)" in _entry_expression(), "one JSON object, one line"


def _dotnet_format(dotnet: str) -> str:
    """The .NET custom date-time format used by the policy, as a Python strftime format."""
    tokens = {"yyyy": "%Y", "MM": "%m", "dd": "%d", "HH": "%H", "mm": "%M", "ss": "%S", "fff": "{ms}"}
    out, i = [], 0
    while i < len(dotnet):
        if dotnet[i] == "'":
            end = dotnet.index("'", i + 1)
            out.append(dotnet[i + 1:end])
            i = end + 1
            continue
        for token, replacement in tokens.items():
            if dotnet.startswith(token, i):
                out.append(replacement)
                i += len(token)
                break
        else:
            assert dotnet[i] in "-:.T ", f"unhandled .NET format character {dotnet[i]!r} in {dotnet!r}"
            out.append(dotnet[i])
            i += 1
    return "".join(out)


def _policy_timestamp(moment: datetime.datetime) -> str:
    match = re.search(r'"timestamp", context\.Timestamp\.ToUniversalTime\(\)\.ToString\("([^"]+)"',
                      _entry_expression())
    assert match, "the timestamp is context.Timestamp (UTC) in a fixed format"
    utc = moment.astimezone(datetime.UTC)
    return utc.strftime(_dotnet_format(match.group(1))).replace("{ms}", f"{utc.microsecond // 1000:03d}")


def test_entry_timestamp_is_rfc3339_utc() -> None:
    tokyo = datetime.timezone(datetime.timedelta(hours=9))
    for moment in (datetime.datetime(2026, 11, 24, 21, 0, 2, 919000, tzinfo=datetime.UTC),
                   datetime.datetime(2026, 12, 31, 23, 59, 59, 1000, tzinfo=tokyo)):
        text = _policy_timestamp(moment)
        assert RFC3339.match(text), text
        assert datetime.datetime.fromisoformat(text) == moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    assert _policy_timestamp(datetime.datetime(2026, 11, 24, 21, 0, 2, 919000, tzinfo=datetime.UTC)) == (
        "2026-11-24T21:00:02.919Z"
    )


def test_entry_stays_under_max_entry_bytes() -> None:
    limits = [int(n) for n in re.findall(r"Length > (\d{4,})\)", _entry_expression())]
    assert len(limits) == 2 and len(set(limits)) == 1, "request and response bodies are capped alike"
    max_entry_bytes = next(f.default for f in FIELDS if f.name == "max_entry_bytes")
    # Two bodies of up to `limit` characters, 3 UTF-8 bytes each at worst, plus the other fields.
    assert 2 * limits[0] * 3 + 64 * 1024 <= max_entry_bytes


def _prices() -> dict[str, tuple[float, float]]:
    readme = (KIT / "README.md").read_text(encoding="utf-8")
    table = re.search(r"--named-value-id blobwriter-prices-eur.*?--value '([^']+)'", readme, re.S)
    assert table, "README.md shows the price table"
    prices = {}
    for item in table.group(1).split(";"):  # the policy's parsing: name=prompt/completion per 1,000 tokens
        name, _, per = item.partition("=")
        prompt, _, completion = per.partition("/")
        prices[name.strip()] = (float(prompt), float(completion))
    return prices


def test_readme_price_table_reproduces_the_data_set_costs() -> None:
    cost_expression = _set_variables(*read_policy(LOG))["blobwriter-cost"]
    assert cost_expression.count("/ 1000.0 * double.Parse(") == 2 and "Math.Round(cost, 6)" in cost_expression
    assert '"{{blobwriter-prices-eur}}".Split(\';\')' in cost_expression
    prices = _prices()
    checked = 0
    for entry in _data_set():
        tokens = entry["tokens"]
        if tokens is None:
            assert entry["cost_eur"] == 0.0
            continue
        prompt, completion = prices[entry["deployment"]]
        # The policy's arithmetic: prompt / 1000.0 * price + completion / 1000.0 * price, rounded to 6 places.
        cost = round(tokens["prompt"] / 1000.0 * prompt + tokens["completion"] / 1000.0 * completion, 6)
        assert cost == entry["cost_eur"], (entry["id"], cost, entry["cost_eur"])
        checked += 1
    assert checked > 10_000


async def test_entries_of_the_policys_shape_go_through_the_api(make_settings: Callable[..., Settings]) -> None:
    """What the gateway would send for the data set's calls: accepted (202) and read back unchanged."""
    settings = make_settings(batch_size=100)
    fields = _properties(_entry_expression())
    sent = []
    for record in _data_set(limit=300):
        entry = {name: record[name] for name in fields}
        # The gateway's clock, in the policy's format (the data set also has offsets and naive times).
        entry["timestamp"] = _policy_timestamp(datetime.datetime.fromisoformat(record["timestamp"]).replace(
            tzinfo=datetime.datetime.fromisoformat(record["timestamp"]).tzinfo or datetime.UTC))
        sent.append(entry)
    app = create_app(settings)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            for entry in sent:  # one call, one POST of one JSON object, as send-one-way-request does
                response = await client.post("/api/logs", content=orjson.dumps(entry),
                                             headers={"content-type": "application/json"})
                assert response.status_code == 202, response.text
    finally:
        await app.state.writer_holder.stop()
    dates = sorted({e["timestamp"][:10] for e in sent})
    store = open_store(settings)
    try:
        stored = [orjson.loads(line) async for line in Reader(store, settings.keys).entries(dates)]
    finally:
        await store.close()
    assert sorted(stored, key=lambda e: e["id"]) == sorted(sent, key=lambda e: e["id"])


@pytest.mark.parametrize("path", [CAPTURE, LOG, API_POLICY], ids=lambda p: p.name)
def test_expressions_use_no_undeclared_helpers(path: Path) -> None:
    """Guard against C# the gateway does not allow in expressions: no declared functions or types."""
    _, expressions = read_policy(path)
    for expression in expressions.values():
        assert "Func<" not in expression and "class " not in expression and "using " not in expression
