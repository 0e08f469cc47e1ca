"""Checks of the Azure deployment (infra/*.bicep, azure.yaml) without Azure or the Bicep CLI.

* every .bicep file under infra/ parses with pycep-parser;
* checkov (`--framework bicep`) finds no failed check; every skip is an in-template
  `//checkov:skip=CKV_...: reason` comment with a reason;
* the security properties of the issue hold in the parsed templates (no shared keys, Key Vault
  references for the keys, identity-based host storage, least-privilege role assignments,
  HTTPS/TLS 1.2, FTP off, no secret in any output);
* every setting of blobwriter/config.py is wired into the function app's app settings, with the
  app's defaults, and local.settings.json.example names the same BLOBWRITER_* settings.

pycep-parser and checkov live in their own venv (.venv-infra, see requirements-infra.txt)
because checkov pins packaging<24. They are found next to sys.executable or in .venv-infra;
without them these tests skip locally and fail under CI (CI=true).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from blobwriter.config import FIELDS

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
MAIN = "main.bicep"
LOCAL_SETTINGS_EXAMPLE = ROOT / "local.settings.json.example"

# Settings of blobwriter/config.py that the function app deliberately does NOT get.
# BLOBWRITER_API_KEY guards only the local `blobwriter serve` server; on Azure Functions the
# routes use function keys (auth level FUNCTION) instead. Add a name here only with a reason.
# api_key: `serve` only. stats_map: the `stats` command only. export_destination: the scheduled export,
# off by default; a deployer sets it by hand for now (docs/DEPLOY.md, "Scheduled export").
NOT_IN_APP_SETTINGS = {"BLOBWRITER_API_KEY", "BLOBWRITER_STATS_MAP", "BLOBWRITER_EXPORT_DESTINATION"}

# Built-in Azure role definition ids.
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"

INSTALL_HINT = (
    "python -m venv .venv-infra && .venv-infra/bin/pip install -r requirements-infra.txt"
)

_PARSE_SCRIPT = r"""
import json, pathlib, sys
from pycep import BicepParser

out = {}
for name in sys.argv[1:]:
    try:
        out[name] = BicepParser().parse(file_path=pathlib.Path(name))
    except Exception as exc:  # report every file, not only the first failure
        out[name] = {"__error__": f"{type(exc).__name__}: {exc}"}
json.dump(out, sys.stdout, default=str)
"""


# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------


def _tool_missing(what: str) -> None:
    message = f"{what} is not installed; install it with: {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message)
    pytest.skip(message)


def _venv_infra_bin() -> Path:
    return ROOT / ".venv-infra" / ("Scripts" if os.name == "nt" else "bin")


def _infra_python() -> str | None:
    """An interpreter that can import pycep: this one, else the one in .venv-infra."""
    if importlib.util.find_spec("pycep") is not None:
        return sys.executable
    for name in ("python", "python.exe"):
        candidate = _venv_infra_bin() / name
        if candidate.exists():
            return str(candidate)
    return None


def _checkov() -> str | None:
    for folder in (Path(sys.executable).parent, _venv_infra_bin()):
        for name in ("checkov", "checkov.cmd", "checkov.exe"):
            if (folder / name).exists():
                return str(folder / name)
    return None


def _bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@pytest.fixture(scope="session")
def parsed() -> dict[str, dict[str, Any]]:
    """Every infra/**/*.bicep file parsed by pycep, keyed by its path relative to infra/."""
    python = _infra_python()
    if python is None:
        _tool_missing("pycep-parser")
    files = _bicep_files()
    assert files, "no .bicep files under infra/"
    result = subprocess.run(
        [python, "-c", _PARSE_SCRIPT, *map(str, files)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, f"pycep-parser crashed:\n{result.stderr}"
    raw = json.loads(result.stdout)
    return {Path(name).relative_to(INFRA).as_posix(): tree for name, tree in raw.items()}


@pytest.fixture(scope="session")
def templates(parsed: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    errors = {name: tree["__error__"] for name, tree in parsed.items() if "__error__" in tree}
    if errors:
        pytest.fail(f"Bicep files that do not parse: {errors}")
    return parsed


# --------------------------------------------------------------------------------------------
# Helpers over pycep's JSON
# --------------------------------------------------------------------------------------------


def _body(resource_or_module: dict[str, Any]) -> dict[str, Any]:
    """The properties block of a resource/module, unwrapping `if (...)` and `for ... in` forms."""
    config = resource_or_module["config"]
    while isinstance(config, dict) and "config" in config and ({"condition", "loop_type"} & config.keys()):
        config = config["config"]
    return config


def _condition(resource: dict[str, Any]) -> Any:
    return resource["config"].get("condition")


def _resources(tree: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in tree.get("resources", {}).items() if r["type"].lower() == rtype.lower()}


def _all_resources(templates: dict[str, dict[str, Any]], rtype: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for file, tree in templates.items():
        for name, resource in _resources(tree, rtype).items():
            yield file, name, resource


def _one(templates: dict[str, dict[str, Any]], rtype: str) -> tuple[str, dict[str, Any]]:
    found = list(_all_resources(templates, rtype))
    assert len(found) == 1, f"expected exactly one {rtype}, found {[(f, n) for f, n, _ in found]}"
    file, _, resource = found[0]
    return file, resource


def _strings(node: Any, skip_empty_calls: bool = False) -> Iterator[str]:
    """Every string inside a parsed expression (identifiers, literals, interpolations)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        if skip_empty_calls and isinstance(node.get("function"), dict) and node["function"].get("type") == "empty":
            return  # `empty(x)` only tells whether x is set: not a use of x's value
        for value in node.values():
            yield from _strings(value, skip_empty_calls)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value, skip_empty_calls)


def _mentions(node: Any, name: str, skip_empty_calls: bool = True) -> bool:
    """Whether an expression uses identifier `name` (bare, as `name.x`, or inside `${...}`)."""
    bare = re.compile(rf"^{re.escape(name)}(\.|\[|$)")
    interpolated = re.compile(rf"\$\{{[^}}]*(?<![\w.]){re.escape(name)}(?!\w)[^}}]*\}}")
    return any(bare.match(s) or interpolated.search(s) for s in _strings(node, skip_empty_calls))


def _secure_params(tree: dict[str, Any]) -> set[str]:
    return {
        name for name, p in tree.get("parameters", {}).items()
        if any(d.get("type") == "secure" for d in p.get("decorators", []))
    }


def _tainted(tree: dict[str, Any]) -> set[str]:
    """Secure parameters plus the variables whose value is computed from one (transitively)."""
    tainted = _secure_params(tree)
    changed = True
    while changed:
        changed = False
        for name, var in tree.get("variables", {}).items():
            if name not in tainted and any(_mentions(var["value"], t) for t in tainted):
                tainted.add(name)
                changed = True
    return tainted


def _app_settings(templates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """name -> value of the function app's app settings, following main.bicep's wiring."""
    site_file, site = _one(templates, "Microsoft.Web/sites")
    site_settings = _body(site)["properties"]["siteConfig"]["appSettings"]
    if isinstance(site_settings, list):  # written inline in the site resource
        return {s["name"]: s["value"] for s in site_settings}
    # Passed in as a module parameter: find main.bicep's module call for this file.
    main = templates[MAIN]
    calls = [m for m in main.get("modules", {}).values() if m["detail"]["path"] == site_file]
    assert len(calls) == 1, f"main.bicep should call {site_file} once"
    passed = _body(calls[0])["params"][site_settings]
    if isinstance(passed, str):
        passed = main["variables"][passed]["value"]
    assert isinstance(passed, list), "app settings should be a literal list of {name, value}"
    names = [s["name"] for s in passed]
    duplicates = {n for n in names if names.count(n) > 1}
    assert not duplicates, f"app settings set twice: {duplicates}"
    return {s["name"]: s["value"] for s in passed}


def _module_call(templates: dict[str, dict[str, Any]], file: str) -> dict[str, Any]:
    calls = [m for m in templates[MAIN].get("modules", {}).values() if m["detail"]["path"] == file]
    assert len(calls) == 1, f"main.bicep should call {file} exactly once"
    return _body(calls[0])["params"]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _role_ids(tree: dict[str, Any], assignment: dict[str, Any]) -> set[str]:
    """The role definition GUIDs a (possibly looped) role assignment grants."""
    variables = tree.get("variables", {})
    ref = _body(assignment)["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
    loop = assignment["config"].get("loop_type")
    if loop and ref == loop["detail"]["item_name"]:
        names = variables[loop["detail"]["array_name"]]["value"]
    else:
        names = [ref]
    return {variables[n]["value"] if n in variables else n for n in names}


def _role_grants(templates: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(file, role GUID, scope resource type, principal expression) for every role assignment."""
    grants = []
    for file, _, assignment in _all_resources(templates, "Microsoft.Authorization/roleAssignments"):
        tree = templates[file]
        body = _body(assignment)
        scope = body.get("scope")
        scope_type = tree["resources"][scope]["type"] if scope in tree.get("resources", {}) else str(scope)
        for role in _role_ids(tree, assignment):
            grants.append((file, role, scope_type, body["properties"]["principalId"]))
    return grants


def _raw_texts() -> dict[str, str]:
    paths = [*INFRA.rglob("*.bicep"), *INFRA.rglob("*.json"), ROOT / "azure.yaml"]
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in paths if p.exists()}


# --------------------------------------------------------------------------------------------
# Parsing and scanning
# --------------------------------------------------------------------------------------------


def test_every_bicep_file_parses(parsed: dict[str, dict[str, Any]]) -> None:
    assert MAIN in parsed and any(name.startswith("modules/") for name in parsed)
    errors = {name: tree["__error__"] for name, tree in parsed.items() if "__error__" in tree}
    assert not errors, f"pycep-parser could not parse: {errors}"


def test_every_module_path_exists(templates: dict[str, dict[str, Any]]) -> None:
    for file, tree in templates.items():
        for name, module in tree.get("modules", {}).items():
            target = (INFRA / file).parent / module["detail"]["path"]
            assert target.is_file(), f"{file}: module {name} points to missing {target}"


def test_checkov_has_no_failed_checks() -> None:
    checkov = _checkov()
    if checkov is None:
        _tool_missing("checkov")
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    result = subprocess.run(
        [checkov, "--framework", "bicep", "--directory", str(INFRA), "--output", "json",
         "--skip-download", "--compact"],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT, check=False,
    )
    assert result.stdout.strip(), f"checkov printed nothing (exit {result.returncode}):\n{result.stderr[-3000:]}"
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range']})"
        for report in reports for c in report.get("results", {}).get("failed_checks", [])
    ]
    passed = sum(report.get("summary", {}).get("passed", 0) for report in reports)
    parse_errors = sum(report.get("summary", {}).get("parsing_errors", 0) for report in reports)
    assert not parse_errors, f"checkov could not parse {parse_errors} file(s); run it by hand to see which"
    assert passed > 0, "checkov ran no bicep check at all"
    assert not failed, "checkov failed checks (fix them or add `//checkov:skip=ID: reason`):\n" + "\n".join(failed)


def test_every_checkov_skip_has_a_reason() -> None:
    pattern = re.compile(r"^\s*//\s*checkov:skip=(CKV2?_[A-Z]+_\d+):\s*(\S.{9,})$")
    for path in _bicep_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "checkov:skip" in line:
                assert pattern.match(line), (
                    f"{path.relative_to(ROOT)}:{number}: write skips as "
                    f"`//checkov:skip=CKV_AZURE_NN: one-line reason` (one check per line)"
                )


# --------------------------------------------------------------------------------------------
# Security properties
# --------------------------------------------------------------------------------------------


def test_storage_accounts_use_entra_id_only_over_tls12(templates: dict[str, dict[str, Any]]) -> None:
    accounts = list(_all_resources(templates, "Microsoft.Storage/storageAccounts"))
    assert {f for f, _, _ in accounts} == {"modules/host-storage.bicep", "modules/logs-storage.bicep"}, (
        "expected one logs account and a separate host account"
    )
    for file, name, account in accounts:
        props = _body(account)["properties"]
        where = f"{file}:{name}"
        assert props.get("allowSharedKeyAccess") is False, where
        assert props.get("allowBlobPublicAccess") is False, where
        assert props.get("minimumTlsVersion") == "TLS1_2", where
        assert props.get("supportsHttpsTrafficOnly") is True, where
    for file, name, container in _all_resources(templates, "Microsoft.Storage/storageAccounts/blobServices/containers"):
        assert _body(container).get("properties", {}).get("publicAccess") == "None", f"{file}:{name}"


def test_no_account_keys_or_connection_strings_anywhere() -> None:
    forbidden = ["AccountKey", "listKeys", "listAccountSas", "listServiceSas", "SharedAccessSignature",
                 "DefaultEndpointsProtocol", "AzureWebJobsStorage'", "connectionStrings"]
    for path, text in _raw_texts().items():
        for word in forbidden:
            assert word.lower() not in text.lower(), f"{path} mentions {word!r}"


def test_host_storage_uses_the_managed_identity(templates: dict[str, dict[str, Any]]) -> None:
    settings = _app_settings(templates)
    assert "AzureWebJobsStorage" not in settings, "the host must not get a connection string"
    for service in ("blob", "queue", "table"):
        value = settings[f"AzureWebJobsStorage__{service}ServiceUri"]
        assert _mentions(value, "hostStorage"), f"{service} endpoint should come from the host storage module"
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert _mentions(settings["AzureWebJobsStorage__clientId"], "identity")
    assert _mentions(settings["AZURE_CLIENT_ID"], "identity")


def test_function_app_is_flex_consumption_https_tls12_no_ftp(templates: dict[str, dict[str, Any]]) -> None:
    file, plan = _one(templates, "Microsoft.Web/serverfarms")
    plan_body = _body(plan)
    assert plan_body["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert plan_body["properties"]["reserved"] is True, "Flex Consumption is Linux (reserved: true)"

    site_file, site = _one(templates, "Microsoft.Web/sites")
    body = _body(site)
    props = body["properties"]
    assert body["kind"] == "functionapp,linux"
    assert body["identity"]["type"] == "UserAssigned"
    assert props["httpsOnly"] is True
    assert props["siteConfig"]["minTlsVersion"] == "1.2"
    assert props["siteConfig"]["ftpsState"] == "Disabled"
    assert _mentions(props["keyVaultReferenceIdentity"], "identityId"), "Key Vault references must use the UAMI"

    config = props["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "pythonVersion"}
    assert templates[site_file]["parameters"]["pythonVersion"]["default"] == "3.11"
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    assert _mentions(storage["authentication"]["userAssignedIdentityResourceId"], "identityId")
    scale = config["scaleAndConcurrency"]
    assert scale["instanceMemoryMB"] == "instanceMemoryMB"
    assert scale["maximumInstanceCount"] == "maximumInstanceCount"
    call = _module_call(templates, site_file)
    assert call["instanceMemoryMB"] == "instanceMemoryMB" and "instanceMemoryMB" in templates[MAIN]["parameters"]
    assert call["maximumInstanceCount"] == "maximumInstanceCount"
    assert "maximumInstanceCount" in templates[MAIN]["parameters"]
    assert call.get("pythonVersion", "3.11") == "3.11"

    policies = {
        _body(r)["name"]: _body(r)["properties"]["allow"]
        for _, _, r in _all_resources(templates, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    }
    assert policies == {"ftp": False, "scm": False}, "FTP and basic-auth publishing must be off"


def test_key_vault_is_rbac_soft_delete_purge_protected(templates: dict[str, dict[str, Any]]) -> None:
    file, vault = _one(templates, "Microsoft.KeyVault/vaults")
    props = _body(vault)["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert props["enablePurgeProtection"] is True
    secure = _secure_params(templates[file])
    secrets = _all_resources(templates, "Microsoft.KeyVault/vaults/secrets")
    values = {_body(s)["properties"]["value"] for _, _, s in secrets}
    assert values and values <= secure, "secret values must come straight from @secure() parameters"


def test_encryption_keys_are_key_vault_references(templates: dict[str, dict[str, Any]]) -> None:
    settings = _app_settings(templates)
    reference = re.compile(r"^@Microsoft\.KeyVault\(SecretUri=\$\{[^}]+\}\)$")
    assert reference.match(settings["BLOBWRITER_ENCRYPTION_KEY"])
    previous = settings["BLOBWRITER_PREVIOUS_KEYS"]
    if isinstance(previous, dict):  # `cond ? '' : '@Microsoft.KeyVault(...)'`: empty or a reference
        branches = previous["operator"]["operands"]
        choices = [branches["true_value"], branches["false_value"]]
        assert "" in choices and any(isinstance(c, str) and reference.match(c) for c in choices)
    else:
        assert reference.match(previous)
    main = templates[MAIN]
    assert {"encryptionKey", "previousKeys"} <= _secure_params(main)
    # The secure parameters go to the Key Vault module and nowhere else.
    tainted = _tainted(main)
    for name, module in main["modules"].items():
        params = _body(module)["params"]
        for key, value in params.items():
            if any(_mentions(value, t) for t in tainted):
                assert module["detail"]["path"] == "modules/keyvault.bicep", f"secret passed to module {name}.{key}"
    for name, value in settings.items():
        assert not any(_mentions(value, t) for t in tainted), f"app setting {name} carries a secret value"


def test_outputs_never_contain_secrets(templates: dict[str, dict[str, Any]]) -> None:
    for file, tree in templates.items():
        tainted = _tainted(tree)
        for name, output in tree.get("outputs", {}).items():
            assert not any(d.get("type") == "secure" for d in output.get("decorators", [])), f"{file}:{name}"
            assert not re.search(r"password|secret", name, re.I), f"{file}: output name {name} looks secret"
            value = output["value"]
            assert not any(_mentions(value, t) for t in tainted), f"{file}: output {name} uses a secret"
            assert not any(s.startswith("list") for s in _strings(value)), f"{file}: output {name} calls list*()"
    outputs = templates[MAIN]["outputs"]
    assert _mentions(outputs["FUNCTION_APP_NAME"]["value"], "functionApp")
    assert re.fullmatch(r"https://\$\{functionApp\.outputs\.\w+\}/api/logs", outputs["INGEST_URL"]["value"])


def test_role_assignments_are_least_privilege(templates: dict[str, dict[str, Any]]) -> None:
    grants = _role_grants(templates)
    by_role: dict[str, set[tuple[str, str]]] = {}
    for file, role, scope_type, principal in grants:
        assert principal == "appPrincipalId", f"{file}: role {role} granted to {principal}"
        by_role.setdefault(role, set()).add((file, scope_type))
    assert by_role.get(STORAGE_BLOB_DATA_CONTRIBUTOR) == {
        ("modules/logs-storage.bicep", "Microsoft.Storage/storageAccounts/blobServices/containers")
    }, "logs: Storage Blob Data Contributor on the logs container only"
    host = ("modules/host-storage.bicep", "Microsoft.Storage/storageAccounts")
    assert by_role.get(STORAGE_BLOB_DATA_OWNER) == {host}
    assert by_role.get(STORAGE_QUEUE_DATA_CONTRIBUTOR) == {host}
    assert by_role.get(STORAGE_TABLE_DATA_CONTRIBUTOR) == {host}
    kv_scopes = {scope for _, scope in by_role.get(KEY_VAULT_SECRETS_USER, set())}
    assert kv_scopes and kv_scopes <= {"Microsoft.KeyVault/vaults/secrets", "Microsoft.KeyVault/vaults"}
    assert by_role.get(MONITORING_METRICS_PUBLISHER) == {("modules/monitoring.bicep", "Microsoft.Insights/components")}
    allowed = {STORAGE_BLOB_DATA_CONTRIBUTOR, STORAGE_BLOB_DATA_OWNER, STORAGE_QUEUE_DATA_CONTRIBUTOR,
               STORAGE_TABLE_DATA_CONTRIBUTOR, KEY_VAULT_SECRETS_USER, MONITORING_METRICS_PUBLISHER}
    assert set(by_role) <= allowed, f"unexpected roles: {set(by_role) - allowed}"
    # Every module that grants a role gets the app identity's principal id from main.bicep.
    for file in {g[0] for g in grants}:
        assert _mentions(_module_call(templates, file)["appPrincipalId"], "identity"), file


def test_application_insights_uses_entra_id(templates: dict[str, dict[str, Any]]) -> None:
    _, component = _one(templates, "Microsoft.Insights/components")
    props = _body(component)["properties"]
    assert props["DisableLocalAuth"] is True
    assert props.get("WorkspaceResourceId"), "workspace-based Application Insights"
    _one(templates, "Microsoft.OperationalInsights/workspaces")
    settings = _app_settings(templates)
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in settings
    auth = settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
    assert re.fullmatch(r"Authorization=AAD;ClientId=\$\{identity\.outputs\.clientId\}", auth)


def test_logs_lifecycle_and_optional_immutability(templates: dict[str, dict[str, Any]]) -> None:
    file, policy = _one(templates, "Microsoft.Storage/storageAccounts/managementPolicies")
    assert file == "modules/logs-storage.bicep"
    tree = templates[file]
    rules = _body(policy)["properties"]["policy"]["rules"]
    assert _mentions(tree["variables"][rules]["value"], "deleteRule")
    assert _mentions(tree["variables"]["deleteRule"]["value"], "daysToDelete")
    assert _mentions(tree["variables"]["coolRule"]["value"], "daysToCool")
    _, immutability = _one(templates, "Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies")
    assert _mentions(_condition(immutability), "immutabilityDays"), "immutability must be optional"
    props = _body(immutability)["properties"]
    assert props["allowProtectedAppendWrites"] is True, "append blobs must stay appendable"
    call = _module_call(templates, file)
    for name in ("daysToCool", "daysToDelete", "immutabilityDays"):
        assert call[name] == name and name in templates[MAIN]["parameters"], name


# --------------------------------------------------------------------------------------------
# Settings wiring against blobwriter/config.py
# --------------------------------------------------------------------------------------------


def test_every_config_setting_is_an_app_setting(templates: dict[str, dict[str, Any]]) -> None:
    settings = _app_settings(templates)
    envs = {f.env for f in FIELDS}
    assert NOT_IN_APP_SETTINGS <= envs, f"stale exemptions: {NOT_IN_APP_SETTINGS - envs}"
    missing = sorted(envs - NOT_IN_APP_SETTINGS - settings.keys())
    assert not missing, f"settings in blobwriter/config.py not set in infra/main.bicep: {missing}"
    unknown = sorted(n for n in settings if n.startswith("BLOBWRITER_") and n not in envs)
    assert not unknown, f"app settings that blobwriter does not read: {unknown}"
    exempt_but_set = sorted(NOT_IN_APP_SETTINGS & settings.keys())
    assert not exempt_but_set, f"set although exempt: {exempt_but_set}"


def test_blobwriter_storage_is_the_logs_blob_endpoint(templates: dict[str, dict[str, Any]]) -> None:
    settings = _app_settings(templates)
    assert settings["BLOBWRITER_STORAGE"] == "logsStorage.outputs.blobEndpoint" or _mentions(
        settings["BLOBWRITER_STORAGE"], "logsStorage"
    )
    endpoint = templates["modules/logs-storage.bicep"]["outputs"]["blobEndpoint"]["value"]
    assert re.fullmatch(r"https://\$\{storage\.name\}\.blob\.\$\{environment\(\)\.suffixes\.storage\}", endpoint)


def test_tunables_are_parameters_with_the_app_defaults(templates: dict[str, dict[str, Any]]) -> None:
    params = templates[MAIN]["parameters"]
    for field in FIELDS:
        if field.secret or field.name == "storage" or field.env in NOT_IN_APP_SETTINGS:
            continue  # secrets come from Key Vault; storage is the deployed logs account
        name = _camel(field.name)
        assert name in params, f"{field.env}: add parameter `{name}` to infra/main.bicep"
        default = params[name]["default"]
        expected = field.default
        if isinstance(expected, float):
            assert float(default) == expected, f"{name}: {default!r} != app default {expected!r}"
        else:
            assert default == expected, f"{name}: {default!r} != app default {expected!r}"


def test_local_settings_example_names_the_same_settings(templates: dict[str, dict[str, Any]]) -> None:
    if not LOCAL_SETTINGS_EXAMPLE.exists():
        pytest.skip("local.settings.json.example does not exist yet")
    values = json.loads(LOCAL_SETTINGS_EXAMPLE.read_text(encoding="utf-8"))["Values"]
    local = {n for n in values if n.startswith("BLOBWRITER_")} - NOT_IN_APP_SETTINGS
    deployed = {n for n in _app_settings(templates) if n.startswith("BLOBWRITER_")}
    assert local == deployed, (
        f"only in local.settings.json.example: {sorted(local - deployed)}; "
        f"only in infra/main.bicep: {sorted(deployed - local)}"
    )


# --------------------------------------------------------------------------------------------
# azd wiring
# --------------------------------------------------------------------------------------------


def test_azure_yaml_deploys_the_function_app() -> None:
    config = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    api = config["services"]["api"]
    assert api["project"] == "." and api["language"] == "python" and api["host"] == "function"
    assert (ROOT / config.get("infra", {}).get("path", "infra") / "main.bicep").is_file()


def test_parameters_file_covers_required_parameters(templates: dict[str, dict[str, Any]]) -> None:
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    main = templates[MAIN]["parameters"]
    assert set(given) <= set(main), f"unknown parameters: {set(given) - set(main)}"
    required = {name for name, p in main.items() if p.get("default") is None}
    assert required <= set(given), f"parameters azd cannot fill: {required - set(given)}"
    assert given["encryptionKey"]["value"] == "${BLOBWRITER_ENCRYPTION_KEY}"
    assert given["previousKeys"]["value"] == "${BLOBWRITER_PREVIOUS_KEYS}"


def test_tools_are_pinned_in_requirements_infra() -> None:
    text = (ROOT / "requirements-infra.txt").read_text(encoding="utf-8")
    for package in ("checkov", "pycep-parser"):
        assert re.search(rf"^{package}[<>=]", text, re.M), f"{package} is not pinned in requirements-infra.txt"
