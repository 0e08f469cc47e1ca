"""Checks of the Azure deployment (infra/, azure.yaml, host.json, the deployed requirements) without Azure.

* every .bicep file under infra/ parses with pycep-parser;
* checkov (`--framework bicep`) finds no failed check; every skip is an in-template
  `//checkov:skip=CKV_...: reason` comment with a reason;
* the properties issue 11 asks for hold in the parsed templates: no site property that Flex
  Consumption rejects (the documented deprecation list), `location` on the children ARM needs
  it on, HTTP concurrency and the rolling update set, delete locks, diagnostic settings, no key
  in any parameter, the immutability policy not re-sent once locked, the narrowest writer role;
  plus the earlier ones (no shared keys, Key Vault references, identity-based host storage,
  least-privilege roles, HTTPS/TLS 1.2, FTP off, no secret in any output);
* every setting of blobwriter/config.py is wired into the function app's app settings, with the
  app's defaults, and local.settings.json.example names the same BLOBWRITER_* settings;
* the postprovision hook that makes the Key Vault secrets, run against a fake `az` on PATH;
* host.json's log levels, `make func-azurite` (a real Azurite with blob, queue and table), and
  the pinned requirements.txt that the Functions remote build installs.

pycep-parser and checkov live in their own venv (.venv-infra, see requirements-infra.txt)
because checkov pins packaging<24. They are found next to sys.executable or in .venv-infra;
without them these tests skip locally and fail under CI (CI=true).
"""
from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
import json
import os
import re
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from blobwriter.config import FIELDS, load_settings
from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
MAIN = "main.bicep"
LOCAL_SETTINGS_EXAMPLE = ROOT / "local.settings.json.example"
DEPLOY_MD = ROOT / "docs" / "DEPLOY.md"
HOOK = INFRA / "hooks" / "postprovision.sh"

# Settings of blobwriter/config.py that the function app deliberately does NOT get.
# BLOBWRITER_API_KEY guards only the local `blobwriter serve` server; on Azure Functions the
# routes use function keys (auth level FUNCTION) instead. Add a name here only with a reason.
# api_key: `serve` only. stats_map: the `stats` command only.
# body_timeout, max_concurrent_bodies: they bound how `blobwriter serve` reads request bodies; under
# Functions the host reads the body and hands the app a whole one.
# (export_destination IS an app setting, from the exportDestination parameter: a setting made by hand
# would be gone after the next `azd provision`; see test_export_destination_survives_a_provision.)
NOT_IN_APP_SETTINGS = {"BLOBWRITER_API_KEY", "BLOBWRITER_STATS_MAP",
                       "BLOBWRITER_BODY_TIMEOUT", "BLOBWRITER_MAX_CONCURRENT_BODIES"}

# Built-in Azure role definition ids.
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
KEY_VAULT_SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"

# Flex Consumption plan deprecations: "In the Flex Consumption plan, these site properties and
# application settings are deprecated and shouldn't be used when creating function app resources"
# (https://learn.microsoft.com/azure/azure-functions/functions-app-settings#flex-consumption-plan-deprecations).
# The table writes the site properties as `properties.X` or `properties.siteConfig.X`; ARM reports
# them as Site.SiteConfig.X, so each name is checked in both places, case-insensitively.
FLEX_DEPRECATED_SITE_PROPERTIES = {
    "alwaysOn", "containerSize", "ftpsState", "isReserved", "IsXenon", "javaVersion", "LinuxFxVersion",
    "netFrameworkVersion", "powerShellVersion", "functionAppScaleLimit", "preWarmedInstanceCount",
    "use32BitWorkerProcess", "vnetBackupRestoreEnabled", "vnetContentShareEnabled", "vnetImagePullEnabled",
    "vnetRouteAllEnabled", "windowsFxVersion",
}
FLEX_DEPRECATED_APP_SETTINGS = {
    "ENABLE_ORYX_BUILD", "FUNCTIONS_EXTENSION_VERSION", "FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY", "FUNCTIONS_WORKER_PROCESS_COUNT", "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED",
    "SCM_DO_BUILD_DURING_DEPLOYMENT", "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING", "WEBSITE_CONTENTOVERVNET",
    "WEBSITE_CONTENTSHARE", "WEBSITE_DNS_SERVER", "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT",
    "WEBSITE_NODE_DEFAULT_VERSION", "WEBSITE_RUN_FROM_PACKAGE", "WEBSITE_SKIP_CONTENTSHARE_VALIDATION",
    "WEBSITE_VNET_ROUTE_ALL",
}
# Not in that table, but named by ARM error 51021 on real Flex deployments (Azure/azure-pipelines-tasks
# #21032, Microsoft Q&A 2277522 via terraform-azurerm-avm-res-web-site #360), or hidden for Flex apps by
# the portal (Azure/azure-functions-ux #7660: HTTP 2.0, Always On, remote debugging).
FLEX_REJECTED_SITE_PROPERTIES = {
    "functionsRuntimeScaleMonitoringEnabled", "http20Enabled", "remoteDebuggingEnabled", "remoteDebuggingVersion",
}
# The only siteConfig properties this template sets on the Flex site.
FLEX_SITE_CONFIG_ALLOWED = {"minTlsVersion", "appSettings"}

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
    """The role definition GUIDs a (possibly looped) role assignment grants; `custom:<symbol>` for a custom role."""
    variables = tree.get("variables", {})
    definition = _body(assignment)["properties"]["roleDefinitionId"]
    if "operator" in definition:  # `someRole.id`: a roleDefinitions resource of this template
        symbol = definition["operator"]["operands"]["operand_1"]
        assert tree["resources"][symbol]["type"] == "Microsoft.Authorization/roleDefinitions", symbol
        return {f"custom:{symbol}"}
    ref = definition["function"]["parameters"]["resource_name_1"]
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
    assert _mentions(props["keyVaultReferenceIdentity"], "identityId"), "Key Vault references must use the UAMI"

    config = props["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "pythonVersion"}
    assert templates[site_file]["parameters"]["pythonVersion"]["default"] == "3.11"
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    assert _mentions(storage["authentication"]["userAssignedIdentityResourceId"], "identityId")
    call = _module_call(templates, site_file)
    assert call.get("pythonVersion", "3.11") == "3.11"

    # FTP is off through the publishing-credentials policies, not siteConfig.ftpsState (Flex rejects it).
    policies = {
        _body(r)["name"]: _body(r)["properties"]["allow"]
        for _, _, r in _all_resources(templates, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    }
    assert policies == {"ftp": False, "scm": False}, "FTP and basic-auth publishing must be off"


def _keys_deep(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _keys_deep(value)
    elif isinstance(node, list):
        for value in node:
            yield from _keys_deep(value)


def test_no_site_property_that_flex_consumption_rejects(templates: dict[str, dict[str, Any]]) -> None:
    assert {"ftpsState", "use32BitWorkerProcess", "LinuxFxVersion"} <= FLEX_DEPRECATED_SITE_PROPERTIES
    forbidden = {n.lower() for n in FLEX_DEPRECATED_SITE_PROPERTIES | FLEX_REJECTED_SITE_PROPERTIES}
    for file, name, site in _all_resources(templates, "Microsoft.Web/sites"):
        props = dict(_body(site)["properties"])
        site_config = props.pop("siteConfig", {})
        # The app settings are names and values, not properties: checked below by name.
        settings_free = {k: v for k, v in site_config.items() if k != "appSettings"}
        found = {k for k in [*_keys_deep(props), *_keys_deep(settings_free)] if k.lower() in forbidden}
        assert not found, f"{file}:{name} sets site properties Flex Consumption rejects: {sorted(found)}"
        assert set(site_config) <= FLEX_SITE_CONFIG_ALLOWED, (
            f"{file}:{name}: siteConfig.{sorted(set(site_config) - FLEX_SITE_CONFIG_ALLOWED)} is not known to work "
            "on Flex Consumption; settings of the runtime, scale and updates go in functionAppConfig"
        )
    for file, name, _ in _all_resources(templates, "Microsoft.Web/sites/config"):
        pytest.fail(f"{file}:{name}: site config children are not checked here; set siteConfig on the site instead")
    deprecated = sorted(set(_app_settings(templates)) & FLEX_DEPRECATED_APP_SETTINGS)
    assert not deprecated, f"app settings deprecated on Flex Consumption: {deprecated}"


# Top-level (tracked) resources need a location; of the child types used here, ARM also rejects
# basicPublishingCredentialsPolicies without one (bicep-types-az #1317 and #1571, bicep #5531; the
# Azure Verified Module always passes it). Extension resources and storage/Key Vault children take none.
CHILDREN_NEEDING_LOCATION = {"Microsoft.Web/sites/basicPublishingCredentialsPolicies"}
NO_LOCATION = {"Microsoft.Authorization/roleAssignments", "Microsoft.Authorization/roleDefinitions",
               "Microsoft.Authorization/locks", "Microsoft.Insights/diagnosticSettings"}


def test_every_resource_that_needs_a_location_has_one(templates: dict[str, dict[str, Any]]) -> None:
    checked = 0
    for file, tree in templates.items():
        for name, resource in tree.get("resources", {}).items():
            rtype = resource["type"]
            top_level = rtype.count("/") == 1 and rtype not in NO_LOCATION
            if top_level or rtype in CHILDREN_NEEDING_LOCATION:
                assert _body(resource).get("location") == "location", f"{file}:{name} ({rtype}) has no location"
                checked += 1
    found = [n for _, n, _ in _all_resources(templates, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")]
    assert len(found) == 2 and checked > len(found)


def test_http_concurrency_memory_scale_and_update_strategy(templates: dict[str, dict[str, Any]]) -> None:
    site_file, site = _one(templates, "Microsoft.Web/sites")
    config = _body(site)["properties"]["functionAppConfig"]
    scale = config["scaleAndConcurrency"]
    assert scale["instanceMemoryMB"] == "instanceMemoryMB"
    assert scale["maximumInstanceCount"] == "maximumInstanceCount"
    assert scale["triggers"] == {"http": {"perInstanceConcurrency": "perInstanceConcurrency"}}, (
        "Flex runs Python at one request per instance unless perInstanceConcurrency is set"
    )
    assert config["siteUpdateStrategy"] == {"type": "siteUpdateStrategy"}
    # siteUpdateStrategy needs Microsoft.Web API 2024-11-01 or later.
    assert _one(templates, "Microsoft.Web/sites")[1]["api_version"] >= "2024-11-01"

    call = _module_call(templates, site_file)
    main = templates[MAIN]["parameters"]
    for name in ("instanceMemoryMB", "maximumInstanceCount", "perInstanceConcurrency", "siteUpdateStrategy"):
        assert call[name] == name and name in main, f"{name} must be a parameter of main.bicep passed to the site"

    def limits(name: str) -> dict[str, Any]:
        return {d["type"]: d.get("argument") for d in main[name]["decorators"]}

    assert main["siteUpdateStrategy"]["default"] == "RollingUpdate"
    assert set(limits("siteUpdateStrategy")["allowed"]) == {"RollingUpdate", "Recreate"}
    assert main["instanceMemoryMB"]["default"] == 2048 and limits("instanceMemoryMB")["allowed"] == [512, 2048, 4096]
    assert limits("maximumInstanceCount")["min_value"] == 40 and limits("maximumInstanceCount")["max_value"] == 1000
    assert 40 <= main["maximumInstanceCount"]["default"] <= 1000
    assert limits("perInstanceConcurrency")["min_value"] == 1 and limits("perInstanceConcurrency")["max_value"] == 1000

    # The defaults, as docs/DEPLOY.md (Sizing) justifies them from the app's defaults:
    defaults = {f.name: f.default for f in FIELDS}
    concurrency = main["perInstanceConcurrency"]["default"]
    in_flight = defaults["batch_size"] * defaults["max_concurrent_writes"]
    assert concurrency >= in_flight, (
        f"perInstanceConcurrency {concurrency} < batch_size x max_concurrent_writes = {in_flight}: callers waiting "
        "for their append could not fill the appends in flight"
    )
    # Queue (~2 KB of memory per queued entry, docs/BENCHMARKS.md measures 1.7 KB) plus one 64 KiB
    # body per concurrent request must leave at least half the instance to the host and the worker.
    budget = defaults["max_queue_size"] * 2048 + concurrency * 64 * 1024
    assert budget <= main["instanceMemoryMB"]["default"] * 1024 * 1024 // 2
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    assert host["extensions"]["http"]["maxConcurrentRequests"] >= limits("perInstanceConcurrency")["max_value"], (
        "host.json must never throttle below the platform's per-instance concurrency"
    )


def test_instance_count_description_matches_the_blob_layout(templates: dict[str, dict[str, Any]]) -> None:
    """Each writer (instance) appends to blobs of its own per date (blobwriter/layout.py), so the ~500
    requests/s target of one blob applies per instance; the parameter must not say they share one."""
    from blobwriter.layout import writer_blob

    assert writer_blob("", "2026-01-01", "a" * 32, 0) != writer_blob("", "2026-01-01", "b" * 32, 0)
    decorators = templates[MAIN]["parameters"]["maximumInstanceCount"]["decorators"]
    description = next(d["argument"] for d in decorators if d["type"] == "description")
    assert "same date blob" not in description and "blobs of its own" in description, description
    [row] = [line for line in DEPLOY_MD.read_text(encoding="utf-8").splitlines()
             if line.startswith("| `maximumInstanceCount` |")]
    assert "do not write faster" not in row and "blobs of its own" in row, row


def test_key_vault_is_rbac_soft_delete_purge_protected_and_holds_no_template_secret(
    templates: dict[str, dict[str, Any]],
) -> None:
    file, vault = _one(templates, "Microsoft.KeyVault/vaults")
    props = _body(vault)["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert props["enablePurgeProtection"] is True
    secrets = [(f, n) for f, n, _ in _all_resources(templates, "Microsoft.KeyVault/vaults/secrets")]
    assert not secrets, f"the template must not write secret values (every provision would replace the key): {secrets}"


def test_no_parameter_carries_a_key(templates: dict[str, dict[str, Any]]) -> None:
    for file, tree in templates.items():
        secure = _secure_params(tree)
        assert not secure, f"{file}: @secure() parameters {secure}: no key goes through Bicep"
        for name in tree.get("parameters", {}):
            assert not re.fullmatch(r"(encryption|previous)Keys?", name), f"{file}: parameter {name}"
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
    text = json.dumps(given)
    assert "ENCRYPTION_KEY" not in text and "PREVIOUS_KEYS" not in text, "main.parameters.json must not pass keys"


def test_encryption_keys_are_key_vault_references(templates: dict[str, dict[str, Any]]) -> None:
    settings = _app_settings(templates)
    # Both are references from the first deployment on: a rotation adds secret versions only.
    reference = re.compile(r"^@Microsoft\.KeyVault\(SecretUri=\$\{keyVault\.outputs\.(\w+)\}\)$")
    outputs = templates["modules/keyvault.bicep"]["outputs"]
    for setting, output in (("BLOBWRITER_ENCRYPTION_KEY", "encryptionKeyUri"),
                            ("BLOBWRITER_PREVIOUS_KEYS", "previousKeysUri")):
        match = reference.match(settings[setting]) if isinstance(settings[setting], str) else None
        assert match and match.group(1) == output, f"{setting} must always be a Key Vault reference"
        value = outputs[output]["value"]
        assert isinstance(value, str) and re.fullmatch(r"\$\{vault\.properties\.vaultUri\}secrets/\$\{\w+\}", value), (
            f"{output} must be a versionless secret URI, always present"
        )


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
        if role == KEY_VAULT_SECRETS_OFFICER:
            assert principal == "deployerPrincipalId", f"{file}: Secrets Officer is for the deployer only"
        else:
            assert principal == "appPrincipalId", f"{file}: role {role} granted to {principal}"
        by_role.setdefault(role, set()).add((file, scope_type))
    assert STORAGE_BLOB_DATA_CONTRIBUTOR not in by_role, "the writer gets the custom appender role, not Contributor"
    assert by_role.get("custom:appenderRole") == {
        ("modules/logs-storage.bicep", "Microsoft.Storage/storageAccounts/blobServices/containers")
    }, "logs: the appender role on the logs container only"
    host = ("modules/host-storage.bicep", "Microsoft.Storage/storageAccounts")
    assert by_role.get(STORAGE_BLOB_DATA_OWNER) == {host}
    assert by_role.get(STORAGE_QUEUE_DATA_CONTRIBUTOR) == {host}
    assert by_role.get(STORAGE_TABLE_DATA_CONTRIBUTOR) == {host}
    vault = {("modules/keyvault.bicep", "Microsoft.KeyVault/vaults")}
    assert by_role.get(KEY_VAULT_SECRETS_USER) == vault, "the app reads secrets of blobwriter's own vault"
    assert by_role.get(KEY_VAULT_SECRETS_OFFICER) == vault
    assert by_role.get(MONITORING_METRICS_PUBLISHER) == {("modules/monitoring.bicep", "Microsoft.Insights/components")}
    allowed = {"custom:appenderRole", STORAGE_BLOB_DATA_OWNER, STORAGE_QUEUE_DATA_CONTRIBUTOR,
               STORAGE_TABLE_DATA_CONTRIBUTOR, KEY_VAULT_SECRETS_USER, KEY_VAULT_SECRETS_OFFICER,
               MONITORING_METRICS_PUBLISHER}
    assert set(by_role) <= allowed, f"unexpected roles: {set(by_role) - allowed}"
    # Every module that grants a role gets the app identity's principal id from main.bicep.
    for file in {g[0] for g in grants}:
        assert _mentions(_module_call(templates, file)["appPrincipalId"], "identity"), file
    kv_call = _module_call(templates, "modules/keyvault.bicep")
    assert kv_call["deployerPrincipalId"] == "principalId" and kv_call["deployerPrincipalType"] == "principalType"
    _, officer = next((f, r) for f, n, r in _all_resources(templates, "Microsoft.Authorization/roleAssignments")
                      if n == "deployerSecretsOfficer")
    assert _mentions(_condition(officer), "deployerPrincipalId", skip_empty_calls=False), "only for a known deployer"


def test_log_writer_role_is_the_narrowest_that_appends(templates: dict[str, dict[str, Any]]) -> None:
    file, role = _one(templates, "Microsoft.Authorization/roleDefinitions")
    assert file == "modules/logs-storage.bicep"
    tree = templates[file]
    props = _body(role)["properties"]
    assert props["type"] == "CustomRole"
    [permission] = props["permissions"]

    def listed(value: Any) -> set[str]:
        return set(tree["variables"][value]["value"] if isinstance(value, str) else value)

    data_actions = listed(permission["dataActions"])
    actions = listed(permission["actions"])
    blobs = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs"
    assert data_actions == {f"{blobs}/read", f"{blobs}/write", f"{blobs}/add/action"}, data_actions
    assert actions == {"Microsoft.Storage/storageAccounts/blobServices/containers/read"}, actions
    for action in data_actions | actions:
        assert "*" not in action and "delete" not in action.lower(), action
    assert not listed(permission["notActions"]) and not listed(permission["notDataActions"])
    scopes = props["assignableScopes"]
    assert len(scopes) == 1 and scopes[0]["function"]["type"] == "resource_group"
    [(_, assignment)] = [(n, r) for n, r in _resources(tree, "Microsoft.Authorization/roleAssignments").items()]
    assert _body(assignment)["scope"] == "logsContainer"


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


def test_lifecycle_only_deletes_append_blobs(templates: dict[str, dict[str, Any]]) -> None:
    file, policy = _one(templates, "Microsoft.Storage/storageAccounts/managementPolicies")
    assert file == "modules/logs-storage.bicep"
    tree = templates[file]
    assert _mentions(_condition(policy), "daysToDelete")
    [rule] = _body(policy)["properties"]["policy"]["rules"]
    definition = tree["variables"][rule]["value"]["definition"]
    assert definition["filters"]["blobTypes"] == ["appendBlob"]
    assert definition["actions"] == {"baseBlob": {"delete": {"daysAfterModificationGreaterThan": "daysToDelete"}}}
    tiering = [k for k in _keys_deep(tree) if k.startswith("tierTo")]
    assert not tiering, f"lifecycle management cannot move append blobs to another tier: {tiering}"
    for tree_ in templates.values():
        assert "daysToCool" not in tree_.get("parameters", {}), "a cool-tier parameter would promise what cannot happen"
    description = {d["type"]: d.get("argument") for d in templates[MAIN]["parameters"]["daysToDelete"]["decorators"]}
    assert re.search(r"append blobs.*cannot move to cool", description["description"]), "say what the rule cannot do"
    call = _module_call(templates, file)
    assert call["daysToDelete"] == "daysToDelete"


def test_immutability_is_optional_and_not_sent_again_once_locked(templates: dict[str, dict[str, Any]]) -> None:
    policy_type = "Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies"
    file, immutability = _one(templates, policy_type)
    props = _body(immutability)["properties"]
    assert props["allowProtectedAppendWrites"] is True, "append blobs must stay appendable"
    condition = _condition(immutability)["operator"]
    assert condition["type"] == "and"
    enabled, not_locked = condition["operands"]["operand_1"], condition["operands"]["operand_2"]
    greater = {"type": "greater_than", "operands": {"operand_1": "immutabilityDays", "operand_2": 0}}
    assert enabled == {"operator": greater}
    assert not_locked == {"operator": {"type": "not", "operands": {"bool_value": "immutabilityLocked"}}}
    main = templates[MAIN]["parameters"]
    assert main["immutabilityLocked"]["type"] == "bool" and main["immutabilityLocked"]["default"] is False
    call = _module_call(templates, file)
    assert call["immutabilityLocked"] == "immutabilityLocked" and call["immutabilityDays"] == "immutabilityDays"
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert given["immutabilityLocked"]["value"] == "${BLOBWRITER_IMMUTABILITY_LOCKED=false}"


def test_logs_account_and_vault_have_delete_locks(templates: dict[str, dict[str, Any]]) -> None:
    locks = {(f, _body(r)["scope"]): r for f, _, r in _all_resources(templates, "Microsoft.Authorization/locks")}
    assert set(locks) == {("modules/logs-storage.bicep", "storage"), ("modules/keyvault.bicep", "vault")}
    for (file, scope), lock in locks.items():
        assert _body(lock)["properties"]["level"] == "CanNotDelete", f"{file}: {scope}"
        assert _condition(lock) == "deleteLock", f"{file}: the lock follows the deleteLock parameter"
        assert templates[file]["parameters"]["deleteLock"]["default"] is True
        assert _module_call(templates, file)["deleteLock"] == "deleteLocks"
    main = templates[MAIN]["parameters"]["deleteLocks"]
    assert main["type"] == "bool" and main["default"] is True
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert given["deleteLocks"]["value"] == "${BLOBWRITER_DELETE_LOCKS=true}"


def test_diagnostic_settings_send_audit_logs_to_the_workspace(templates: dict[str, dict[str, Any]]) -> None:
    found = {}
    for file, _, setting in _all_resources(templates, "Microsoft.Insights/diagnosticSettings"):
        body = _body(setting)
        scope_type = templates[file]["resources"][body["scope"]]["type"]
        categories = {log["category"] for log in body["properties"]["logs"] if log["enabled"] is True}
        assert body["properties"]["workspaceId"] == "logAnalyticsWorkspaceId", file
        assert _mentions(_module_call(templates, file)["logAnalyticsWorkspaceId"], "monitoring"), file
        found[scope_type] = categories
    assert found == {
        "Microsoft.Storage/storageAccounts/blobServices": {"StorageRead", "StorageWrite", "StorageDelete"},
        "Microsoft.KeyVault/vaults": {"AuditEvent"},
    }
    workspace = templates["modules/monitoring.bicep"]["outputs"]["logAnalyticsId"]["value"]
    assert _mentions(workspace, "logAnalytics")


# --------------------------------------------------------------------------------------------
# Settings wiring against blobwriter/config.py
# --------------------------------------------------------------------------------------------


def test_every_config_setting_is_an_app_setting(templates: dict[str, dict[str, Any]]) -> None:
    settings = _app_settings(templates)
    envs = {f.env for f in FIELDS}
    assert {f.env for f in FIELDS if f.serve_only} <= NOT_IN_APP_SETTINGS, "config.py's serve_only settings"
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


# Settings the deployment deliberately defaults differently from the app, each with its reason.
DEPLOYED_DEFAULTS: dict[str, Any] = {
    # Under Functions a deploy or restart stops instances without a flush (no shutdown hook in the
    # Python worker): answer 200 only once appended. `blobwriter serve` keeps 'queued'.
    "ack": "written",
    # The app's timestamp window has no bound by default, so that backfills and tests with fixed
    # dates work; a deployed gateway logs calls as they happen, so it refuses entries more than 7
    # days old or more than 1 day ahead (issue 13: no backdating into days already audited).
    "max_past_days": 7,
    "max_future_days": 1,
}
DEPLOYED_BOUNDS = {"max_past_days", "max_future_days"}


def test_tunables_are_parameters_with_the_app_defaults(templates: dict[str, dict[str, Any]]) -> None:
    params = templates[MAIN]["parameters"]
    for field in FIELDS:
        if field.secret or field.name == "storage" or field.env in NOT_IN_APP_SETTINGS:
            continue  # secrets come from Key Vault; storage is the deployed logs account
        name = _camel(field.name)
        assert name in params, f"{field.env}: add parameter `{name}` to infra/main.bicep"
        default = params[name]["default"]
        expected = DEPLOYED_DEFAULTS.get(field.name, field.default)
        if field.name in DEPLOYED_BOUNDS:  # a string parameter, so that '' can deploy 'no bound'
            assert field.default is None and field.cast(field.name, "") is None, f"{name}: '' must mean no bound"
            assert field.cast(field.name, default) == expected, f"{name}: {default!r} != deployed {expected!r}"
            continue
        if expected is None or expected == ():
            expected = ""  # an optional setting or an empty list: the app setting is empty, which means unset
        if isinstance(expected, float):
            assert float(default) == expected, f"{name}: {default!r} != app default {expected!r}"
        else:
            assert default == expected, f"{name}: {default!r} != app default {expected!r}"


def test_local_settings_example_names_the_same_settings(templates: dict[str, dict[str, Any]]) -> None:
    values = json.loads(LOCAL_SETTINGS_EXAMPLE.read_text(encoding="utf-8"))["Values"]
    local = {n for n in values if n.startswith("BLOBWRITER_")} - NOT_IN_APP_SETTINGS
    deployed = {n for n in _app_settings(templates) if n.startswith("BLOBWRITER_")}
    assert local == deployed, (
        f"only in local.settings.json.example: {sorted(local - deployed)}; "
        f"only in infra/main.bicep: {sorted(deployed - local)}"
    )


def _deploy_section(title: str) -> str:
    text = DEPLOY_MD.read_text(encoding="utf-8")
    start = text.index(f"\n{title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else len(text)]


def test_export_destination_survives_a_provision(templates: dict[str, dict[str, Any]]) -> None:
    """Every provision PUTs the site with main.bicep's app settings, which replace the app's whole list
    (Azure/bicep-registry-modules #949): a BLOBWRITER_EXPORT_DESTINATION set by hand with `az functionapp
    config appsettings set` would vanish at the next `azd provision`, and with it, silently, the timer
    (function_app.py registers it only when the setting names a destination). So it is a parameter that
    azd fills from its environment, empty (the export off) by default."""
    settings = _app_settings(templates)
    assert settings.get("BLOBWRITER_EXPORT_DESTINATION") == "exportDestination"
    param = templates[MAIN]["parameters"]["exportDestination"]
    assert param["type"] == "string" and param["default"] == ""
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert given["exportDestination"]["value"] == "${BLOBWRITER_EXPORT_DESTINATION}"
    # The empty default is 'off' for the app, not a destination named ''.
    off = load_settings(env={"BLOBWRITER_STORAGE": "UseDevelopmentStorage=true",
                             "BLOBWRITER_ENCRYPTION_KEY": "A" * 43 + "=", "BLOBWRITER_EXPORT_DESTINATION": ""})
    assert off.export_destination is None
    section = _deploy_section("### Scheduled export")
    commands = "\n".join(re.findall(r"```sh\n(.*?)```", section, re.S))
    assert "azd env set BLOBWRITER_EXPORT_DESTINATION" in commands and "azd provision" in commands
    assert "appsettings set" not in commands, "docs/DEPLOY.md must not set the destination by hand"


# --------------------------------------------------------------------------------------------
# azd wiring
# --------------------------------------------------------------------------------------------


def test_azure_yaml_deploys_the_function_app_and_runs_the_key_hook() -> None:
    config = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    api = config["services"]["api"]
    assert api["project"] == "." and api["language"] == "python" and api["host"] == "function"
    assert api["remoteBuild"] is True, "Flex Consumption builds requirements.txt on the server"
    assert (ROOT / config.get("infra", {}).get("path", "infra") / "main.bicep").is_file()
    hook = config["hooks"]["postprovision"]
    for system in ("posix", "windows"):
        assert hook[system] == {"shell": "sh", "run": HOOK.relative_to(ROOT).as_posix(), "continueOnError": False,
                                "interactive": False}, system
    assert HOOK.stat().st_mode & stat.S_IXUSR, "the hook must be executable"


def test_parameters_file_covers_required_parameters(templates: dict[str, dict[str, Any]]) -> None:
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    main = templates[MAIN]["parameters"]
    assert set(given) <= set(main), f"unknown parameters: {set(given) - set(main)}"
    required = {name for name, p in main.items() if p.get("default") is None}
    assert required <= set(given), f"parameters azd cannot fill: {required - set(given)}"
    assert given["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"
    assert given["principalType"]["value"] == "${AZURE_PRINCIPAL_TYPE=User}"


def test_tools_are_pinned_in_requirements_infra() -> None:
    text = (ROOT / "requirements-infra.txt").read_text(encoding="utf-8")
    for package in ("checkov", "pycep-parser"):
        assert re.search(rf"^{package}[<>=]", text, re.M), f"{package} is not pinned in requirements-infra.txt"


# --------------------------------------------------------------------------------------------
# The postprovision hook that makes the Key Vault secrets, against a fake `az` on PATH
# --------------------------------------------------------------------------------------------

# A stand-in for the Azure CLI: a Key Vault kept in a JSON file, the az error texts the hook
# parses (`ERROR: (SecretNotFound) ...`, `(Forbidden) ...`), and a log of every call.
FAKE_AZ = r'''
import json, os, stat, sys

path = os.environ["FAKE_AZ_STATE"]
with open(path, encoding="utf-8") as f:
    state = json.load(f)
args = sys.argv[1:]
with open(os.environ["FAKE_AZ_LOG"], "a", encoding="utf-8") as f:
    f.write(json.dumps(args) + "\n")


def opt(name):
    return args[args.index(name) + 1] if name in args else None


def save():
    with open(path, "w", encoding="utf-8") as f:
        json.dump(state, f)


def fail(message):
    save()
    sys.stderr.write("ERROR: " + message + "\n")
    sys.exit(1)


if state.get("broken"):
    fail(state["broken"])
if args[:2] == ["keyvault", "secret"]:
    vault, name, secrets = opt("--vault-name"), opt("--name"), state["secrets"]
    if vault != state["vault"]:
        fail(f"(VaultNotFound) The vault {vault} was not found.")
    uri = f"https://{vault}.vault.azure.net/secrets/{name}"
    if args[2] == "show":
        if state.get("forbidden", 0) > 0:
            state["forbidden"] -= 1
            fail("(Forbidden) Caller is not authorized to perform action on resource.\n"
                 'Inner error: {"code": "ForbiddenByRbac"}')
        if name in secrets:
            if secrets[name].get("disabled"):
                fail("(Forbidden) Operation get is not allowed on a disabled secret.")
            print(f"{uri}/v{len(secrets[name]['versions'])}")
            sys.exit(0)
        fail(f"(SecretNotFound) A secret with (name/id) {name} was not found in this key vault.")
    if args[2] == "show-deleted":
        if name in state.get("deleted", []):
            print(f"https://{vault}.vault.azure.net/deletedsecrets/{name}")
            sys.exit(0)
        fail(f"(SecretNotFound) Deleted Secret not found: {name}")
    if args[2] == "set":
        if name in state.get("deleted", []):
            fail(f"(Conflict) Secret {name} is currently in a deleted but recoverable state.")
        assert "--value" not in args, "a secret value on the command line shows in the process list"
        assert opt("--encoding") == "utf-8"
        file = opt("--file")
        mode = stat.S_IMODE(os.stat(file).st_mode)
        with open(file, encoding="utf-8") as f:
            value = f.read()
        versions = secrets.setdefault(name, {"versions": []})["versions"]
        versions.append({"value": value, "content_type": opt("--content-type"), "file_mode": mode})
        if state.get("racer") == name:  # someone else's provision made one at the same moment
            versions.append({"value": "other", "content_type": "", "file_mode": 0})
        save()
        print(f"{uri}/v{len(versions)}")
        sys.exit(0)
    if args[2] == "list-versions":
        print(len(secrets[name]["versions"]))
        sys.exit(0)
if args[0] == "rest":
    state.setdefault("rest", []).append([opt("--method"), opt("--url")])
    save()
    sys.exit(0)
fail("fake az: unexpected command: " + " ".join(args))
'''

KEY_SECRET = "blobwriter-encryption-key"
PREVIOUS_SECRET = "blobwriter-previous-keys"
APP_ID = "/subscriptions/0000/resourceGroups/rg-test/providers/Microsoft.Web/sites/func-blobwriter-test"


class FakeAz:
    def __init__(self, folder: Path) -> None:
        self.bin = folder / "bin"
        self.bin.mkdir()
        script = self.bin / "az"
        script.write_text(f"#!{sys.executable}\n{FAKE_AZ}", encoding="utf-8")
        script.chmod(0o755)
        self.state_path = folder / "state.json"
        self.log_path = folder / "calls.jsonl"
        self.log_path.touch()
        self.vault = "kv-test"
        self.save({"vault": self.vault, "secrets": {}})

    def save(self, state: dict[str, Any]) -> None:
        self.state_path.write_text(json.dumps(state), encoding="utf-8")

    @property
    def state(self) -> dict[str, Any]:
        return json.loads(self.state_path.read_text(encoding="utf-8"))

    def update(self, **values: Any) -> None:
        self.save({**self.state, **values})

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log_path.read_text(encoding="utf-8").splitlines()]

    def run(self, **env: str) -> subprocess.CompletedProcess[str]:
        base = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/tmp"),
            "FAKE_AZ_STATE": str(self.state_path), "FAKE_AZ_LOG": str(self.log_path),
            "KEY_VAULT_NAME": self.vault, "ENCRYPTION_KEY_NAME": KEY_SECRET, "PREVIOUS_KEYS_NAME": PREVIOUS_SECRET,
            "FUNCTION_APP_ID": APP_ID, "BLOBWRITER_RBAC_RETRY_SECONDS": "1", "BLOBWRITER_RBAC_WAIT_SECONDS": "3",
        }
        return subprocess.run(["sh", str(HOOK)], env={**base, **env}, capture_output=True, text=True, timeout=60,
                              check=False)


@pytest.fixture
def fake_az(tmp_path: Path) -> FakeAz:
    return FakeAz(tmp_path)


def _sets(calls: list[list[str]]) -> list[str]:
    return [c[c.index("--name") + 1] for c in calls if c[:3] == ["keyvault", "secret", "set"]]


def test_hook_makes_the_key_once_and_a_later_provision_never_replaces_it(fake_az: FakeAz) -> None:
    first = fake_az.run()
    assert first.returncode == 0, first.stderr
    secrets = fake_az.state["secrets"]
    [key_version] = secrets[KEY_SECRET]["versions"]
    [previous_version] = secrets[PREVIOUS_SECRET]["versions"]
    key = key_version["value"]
    assert len(base64.b64decode(key, validate=True)) == 32, "a base64 AES-256 key"
    assert "AES-256-GCM" in key_version["content_type"]
    assert key_version["file_mode"] & 0o077 == 0, "the key file must be private to its owner"
    assert previous_version["value"] == ","
    # The app accepts both: a valid current key, and ',' as no previous keys.
    settings = load_settings(env={"BLOBWRITER_STORAGE": "UseDevelopmentStorage=true",
                                  "BLOBWRITER_ENCRYPTION_KEY": key, "BLOBWRITER_PREVIOUS_KEYS": ","})
    assert settings.encryption_key is not None and settings.previous_keys == ()
    # The key never shows: not on a command line, not in the output.
    assert not any(key in " ".join(call) for call in fake_az.calls())
    assert key not in first.stdout + first.stderr
    assert f"created secret {KEY_SECRET}" in first.stderr
    refresh = f"{APP_ID}/config/configreferences/appsettings/refresh?api-version=2022-03-01"
    assert fake_az.state["rest"] == [["post", refresh]]

    # A teammate provisioning from a fresh clone: both secrets exist, nothing is written.
    before = len(fake_az.calls())
    second = fake_az.run()
    assert second.returncode == 0, second.stderr
    assert _sets(fake_az.calls()[before:]) == []
    assert fake_az.state["secrets"][KEY_SECRET]["versions"] == [key_version]
    assert fake_az.state["rest"] == [["post", refresh]], "nothing new, nothing to refresh"
    assert f"secret {KEY_SECRET} exists in kv-test: left as it is" in second.stderr


def test_hook_adds_only_the_missing_secret(fake_az: FakeAz) -> None:
    existing = {"versions": [{"value": "old-key", "content_type": "x", "file_mode": 0}]}
    fake_az.update(secrets={KEY_SECRET: existing})
    result = fake_az.run()
    assert result.returncode == 0, result.stderr
    assert _sets(fake_az.calls()) == [PREVIOUS_SECRET]
    assert fake_az.state["secrets"][KEY_SECRET] == existing


def test_hook_waits_for_a_new_role_assignment(fake_az: FakeAz) -> None:
    fake_az.update(forbidden=2)
    result = fake_az.run(BLOBWRITER_RBAC_WAIT_SECONDS="10")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("no access to secrets in kv-test yet") == 2
    assert _sets(fake_az.calls()) == [KEY_SECRET, PREVIOUS_SECRET]


def test_hook_gives_up_without_access_and_writes_nothing(fake_az: FakeAz) -> None:
    fake_az.update(forbidden=1000)
    result = fake_az.run(BLOBWRITER_RBAC_WAIT_SECONDS="2")
    assert result.returncode != 0
    assert "Key Vault Secrets Officer" in result.stderr
    assert _sets(fake_az.calls()) == []


def test_hook_never_replaces_a_soft_deleted_key(fake_az: FakeAz) -> None:
    fake_az.update(deleted=[KEY_SECRET])
    result = fake_az.run()
    assert result.returncode != 0
    assert f"az keyvault secret recover --vault-name kv-test --name {KEY_SECRET}" in result.stderr
    assert _sets(fake_az.calls()) == []


def test_hook_stops_on_a_disabled_key(fake_az: FakeAz) -> None:
    fake_az.update(secrets={KEY_SECRET: {"versions": [{"value": "k"}], "disabled": True}})
    result = fake_az.run()
    assert result.returncode != 0 and "disabled" in result.stderr
    assert _sets(fake_az.calls()) == []


def test_hook_stops_on_any_other_az_error(fake_az: FakeAz) -> None:
    fake_az.update(broken="Please run 'az login' to setup account.")
    result = fake_az.run()
    assert result.returncode != 0
    assert "az login" in result.stderr and "Nothing was changed" in result.stderr
    assert _sets(fake_az.calls()) == []


def test_hook_needs_the_vault_name(fake_az: FakeAz) -> None:
    result = fake_az.run(KEY_VAULT_NAME="")
    assert result.returncode != 0 and "KEY_VAULT_NAME" in result.stderr
    assert fake_az.calls() == []


def test_hook_warns_when_two_provisions_raced(fake_az: FakeAz) -> None:
    fake_az.update(racer=KEY_SECRET)
    result = fake_az.run()
    assert result.returncode == 0, result.stderr
    assert f"WARNING: secret {KEY_SECRET} now has 2 versions" in result.stderr


# --------------------------------------------------------------------------------------------
# host.json: what reaches Application Insights
# --------------------------------------------------------------------------------------------

LEVELS = ["Trace", "Debug", "Information", "Warning", "Error", "Critical", "None"]


def _host_level(log_levels: dict[str, str], category: str) -> int:
    """The level .NET logging applies to `category`: the longest configured prefix, else default."""
    matches = [name for name in log_levels if name.lower() != "default"
               and (category.lower() == name.lower() or category.lower().startswith(name.lower() + "."))]
    name = max(matches, key=len) if matches else next(n for n in log_levels if n.lower() == "default")
    return LEVELS.index(log_levels[name])


def test_host_json_shows_every_answer_and_quiets_sdk_request_logs() -> None:
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    levels = host["logging"]["logLevel"]
    # 4xx and 503 answers are successful invocations: Host.Results must log them (requests table).
    assert _host_level(levels, "Host.Results") <= LEVELS.index("Information")
    excluded = host["logging"]["applicationInsights"]["samplingSettings"]["excludedTypes"].split(";")
    assert "Request" in excluded, "every request (and so every 4xx/503) is kept, not sampled"
    # The Python worker forwards its log records under the invocation's category
    # Function.<function name>.User, not under the Python logger name (azure.core..., blobwriter...).
    import inspect

    import azure.functions as func

    name = inspect.signature(func.AsgiFunctionApp.__init__).parameters["function_name"].default
    assert "function_name" not in (ROOT / "function_app.py").read_text(encoding="utf-8"), (
        "function_app.py names its function: update host.json and this test"
    )
    user = _host_level(levels, f"Function.{name}.User")
    assert LEVELS.index("Warning") <= user <= LEVELS.index("Error"), "SDK INFO per request: off; warnings: on"
    assert _host_level(levels, f"Function.{name}") >= LEVELS.index("Warning"), "Executing/Executed duplicate requests"
    # The host's own Azure SDK (its storage and identity calls) logs every request at Information too.
    for category in ("Azure.Core", "Azure.Identity"):
        assert _host_level(levels, category) == LEVELS.index("Warning"), category
    assert _host_level(levels, "Host.Startup") <= LEVELS.index("Information"), "keep the host's own start-up log"


# --------------------------------------------------------------------------------------------
# `func start` locally: `make func-azurite` and local.settings.json.example
# --------------------------------------------------------------------------------------------


def _script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_{name}", ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_func_azurite_ports_do_not_collide_with_make_run() -> None:
    func_azurite, run_local = _script("func_azurite"), _script("run_local")
    ports = set(func_azurite.DEFAULT_PORTS.values())
    assert len(ports) == 3 and run_local.AZURITE_PORT not in ports and func_azurite.FUNC_PORT != run_local.PORT
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^func-azurite: install-app\n\t\$\(BIN\)/python scripts/func_azurite\.py$", makefile, re.M)
    # Serving needs the venv and Azurite, not the Bicep checks' venv (checkov): a first `make run` skips it.
    assert re.search(r"^install-app: \$\(PY_STAMP\) \$\(NODE_STAMP\)$", makefile, re.M)
    assert re.search(r"^run: install-app$", makefile, re.M)
    example = json.loads(LOCAL_SETTINGS_EXAMPLE.read_text(encoding="utf-8"))
    assert example["Host"]["LocalHttpPort"] == func_azurite.FUNC_PORT
    values = example["Values"]
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    host_storage = dict(part.split("=", 1) for part in values["AzureWebJobsStorage"].split(";"))
    for service, port in func_azurite.DEFAULT_PORTS.items():
        endpoint = host_storage[f"{service.capitalize()}Endpoint"]
        assert endpoint == f"http://127.0.0.1:{port}/{ACCOUNT}", f"AzureWebJobsStorage {service}: {endpoint}"
    blob = dict(part.split("=", 1) for part in values["BLOBWRITER_STORAGE"].split(";"))["BlobEndpoint"]
    assert blob == f"http://127.0.0.1:{func_azurite.DEFAULT_PORTS['blob']}/{ACCOUNT}"
    assert host_storage["AccountKey"] == ACCOUNT_KEY, "Azurite's well-known development key"
    named = {f.env for f in FIELDS} - NOT_IN_APP_SETTINGS
    assert named <= set(values), f"not in local.settings.json.example: {sorted(named - set(values))}"


def test_azurite_key_is_written_once_for_scripts_tests_and_benchmarks() -> None:
    """Azurite's development key was written in scripts/run_local.py and tests/support/azurite.py (and the
    benchmarks took the tests'): scripts/devlocal.py holds it now, and the rest import it from there
    (local.settings.json.example, JSON, is checked against it above)."""
    from scripts.devlocal import AZURITE_ACCOUNT_KEY

    written = sorted(str(path.relative_to(ROOT)) for folder in ("blobwriter", "scripts", "tests", "bench", "examples")
                     for path in (ROOT / folder).rglob("*.py")
                     if AZURITE_ACCOUNT_KEY[:24] in path.read_text(encoding="utf-8"))
    assert written == ["scripts/devlocal.py"]
    assert ACCOUNT_KEY is AZURITE_ACCOUNT_KEY and _script("run_local").AZURITE_ACCOUNT_KEY == AZURITE_ACCOUNT_KEY


def test_make_run_serves_on_the_azurite_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    # AZURITE_BLOB_PORT moved Azurite, but the server (and the printed read command) kept
    # UseDevelopmentStorage=true, which always means 10000: nothing was written where Azurite listened.
    monkeypatch.setenv("AZURITE_BLOB_PORT", "10050")
    run_local = _script("run_local")
    assert run_local.AZURITE_PORT == 10050
    assert run_local.local_storage(10000) == "UseDevelopmentStorage=true"
    settings = load_settings(env={"BLOBWRITER_STORAGE": run_local.local_storage(10050),
                                  "BLOBWRITER_ENCRYPTION_KEY": base64.b64encode(bytes(32)).decode()})
    assert settings.storage_kind == "connection_string"
    parts = dict(part.split("=", 1) for part in run_local.local_storage(10050).split(";"))
    assert parts["BlobEndpoint"] == f"http://127.0.0.1:10050/{ACCOUNT}" and parts["AccountKey"] == ACCOUNT_KEY
    source = (ROOT / "scripts" / "run_local.py").read_text(encoding="utf-8")
    assert "BLOBWRITER_STORAGE=UseDevelopmentStorage=true" not in source, "the read command must name that Azurite"


def test_func_azurite_makes_a_working_local_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    func_azurite = _script("func_azurite")
    monkeypatch.setattr(func_azurite, "LOCAL", tmp_path)
    monkeypatch.setattr(func_azurite, "KEY_FILE", tmp_path / "dev.key")
    monkeypatch.setattr(func_azurite, "SETTINGS", tmp_path / "local.settings.json")
    ports = {"blob": 20100, "queue": 20101, "table": 20102}
    func_azurite.ensure_local_settings(ports)
    made = json.loads((tmp_path / "local.settings.json").read_text(encoding="utf-8"))
    values = made["Values"]
    assert f"QueueEndpoint=http://127.0.0.1:20101/{ACCOUNT}" in values["AzureWebJobsStorage"]
    assert values["BLOBWRITER_ENCRYPTION_KEY"] == (tmp_path / "dev.key").read_text().strip()
    settings = load_settings(env={k: v for k, v in values.items() if k.startswith("BLOBWRITER_")})
    assert settings.storage_kind == "connection_string" and settings.encryption_key is not None
    # An existing file is left alone.
    (tmp_path / "local.settings.json").write_text('{"Values": {}}', encoding="utf-8")
    func_azurite.ensure_local_settings(ports)
    assert json.loads((tmp_path / "local.settings.json").read_text(encoding="utf-8")) == {"Values": {}}


def test_func_azurite_serves_blob_queue_and_table(tmp_path: Path) -> None:
    from azure.core.exceptions import ResourceExistsError
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueServiceClient

    ports = {"blob": free_port(), "queue": free_port(), "table": free_port()}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "func_azurite.py"), "--blob-port", str(ports["blob"]),
         "--queue-port", str(ports["queue"]), "--table-port", str(ports["table"]),
         "--location", str(tmp_path / "azurite"), "--no-local-settings"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        for port in ports.values():
            wait_for_port(port, timeout=60)
        func_azurite = _script("func_azurite")
        example = json.loads(LOCAL_SETTINGS_EXAMPLE.read_text(encoding="utf-8"))["Values"]["AzureWebJobsStorage"]
        connection = func_azurite.with_ports(example, ports)  # what the Functions host would use
        name = f"t{uuid.uuid4().hex[:12]}"
        with BlobServiceClient.from_connection_string(connection) as blobs:
            blob = blobs.get_blob_client(name, "probe")
            try:
                blobs.create_container(name)
            except ResourceExistsError:
                pass
            blob.upload_blob(b"lease")
            assert blob.download_blob().readall() == b"lease"
        with QueueServiceClient.from_connection_string(connection) as queues:
            queue = queues.create_queue(name)
            queue.send_message("hello")
            assert [m.content for m in queue.receive_messages()] == ["hello"]
        with TableServiceClient.from_connection_string(connection) as tables:
            table = tables.create_table(name)
            table.upsert_entity({"PartitionKey": "p", "RowKey": "r", "value": 1})
            assert table.get_entity("p", "r")["value"] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "func start --port 7072" in output and ". .venv/bin/activate" in output
    for port in ports.values():
        with pytest.raises(RuntimeError):
            wait_for_port(port, timeout=0.5)  # Azurite stopped with the script


def test_readme_func_start_recipe_matches() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**With Azure Functions Core Tools**"):readme.index("## Writing from Python")]
    for needed in ("make func-azurite", ". .venv/bin/activate", "func start --port 7072", "10100"):
        assert needed in section, f"README's func start recipe lacks {needed!r}"
    assert "func start\n" not in section and "func start  " not in section, "a bare `func start` takes 7071"


# --------------------------------------------------------------------------------------------
# What the Functions deployment installs: requirements.txt
# --------------------------------------------------------------------------------------------


def _requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_requirements_txt_pins_the_whole_runtime_set() -> None:
    from packaging.requirements import Requirement

    pins = {}
    for line in _requirement_lines(ROOT / "requirements.txt"):
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;=<>!~]+)", line)
        assert match, f"requirements.txt: {line!r} is not an exact pin (name==version); run `make lock`"
        pins[_norm(match.group(1))] = match.group(2)
    direct = {_norm(Requirement(line).name) for line in _requirement_lines(ROOT / "requirements.in")}
    assert direct <= set(pins), f"requirements.in not pinned: {sorted(direct - set(pins))}; run `make lock`"
    # Closed: every dependency of a pinned package (on the deployed Linux / CPython 3.11) is pinned too.
    environment = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                   "python_version": "3.11", "python_full_version": "3.11.7", "os_name": "posix",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    for name, version in pins.items():
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name} is pinned but not installed here: run `make install`")
        assert distribution.version == version, f"{name}: installed {distribution.version}, pinned {version}"
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                assert _norm(requirement.name) in pins, f"{name} needs {requirement.name}, which is not pinned"
    for serve_only in ("uvicorn", "uvloop", "httptools", "watchfiles", "websockets"):
        assert serve_only not in pins, f"{serve_only} is only for `blobwriter serve`: keep it out of the deployment"
    assert "starlette" in pins, "blobwriter/api.py imports starlette at module level"
    assert "azure-functions" in pins


def test_requirements_in_matches_the_package_dependencies() -> None:
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = {str(Requirement(r)) for r in project["dependencies"] + project["optional-dependencies"]["functions"]}
    given = {str(Requirement(r)) for r in _requirement_lines(ROOT / "requirements.in")}
    assert given == wanted, f"only in requirements.in: {given - wanted}; only in pyproject.toml: {wanted - given}"
    serve = [Requirement(r) for r in project["optional-dependencies"]["serve"]]
    assert [(r.name, r.extras) for r in serve] == [("uvicorn", {"standard"})]
    assert not any(Requirement(r).name == "uvicorn" for r in project["dependencies"])
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r'pip install --quiet -e "\.\[[a-z,]*\bserve\b[a-z,]*\]"', makefile), \
        "make install must install the serve extra"
    funcignore = (ROOT / ".funcignore").read_text(encoding="utf-8").split()
    assert "requirements.in" in funcignore and "requirements.txt" not in funcignore


def test_make_lock_keeps_the_pyarrow_line_deploy_md_adds() -> None:
    """`make lock` rewrote requirements.txt from requirements.in alone and dropped the pyarrow line that
    DEPLOY.md has a deployment with the scheduled export add: its next deploy lost the export. The lock
    script now resolves an OPTIONAL package again while requirements.txt has it (in pyproject.toml's
    range), and writes it at the end: both the committed file and the one DEPLOY.md makes of it are
    exactly what the script writes for their pins, whatever order pip reports them in. (pip's resolve
    needs the package registry and is not run here: `scripts/lock_requirements.py --check` does.)"""
    import tomllib

    lock = _script("lock_requirements")
    committed = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    appended = re.findall(r"^echo '([^']+)' >> requirements\.txt", _deploy_section("### Scheduled export"), re.M)
    deployed = committed + "".join(f"{line}\n" for line in appended)

    def pins(text: str) -> list[tuple[str, str]]:
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        return [(name, version) for name, version in (line.split("==") for line in lines)]

    assert lock.optional_in(committed) == [] and lock.optional_in(deployed) == ["pyarrow"]
    assert lock.render(sorted(pins(committed), reverse=True)) == committed
    assert lock.render(sorted(pins(deployed), reverse=True)) == deployed  # the line kept, where DEPLOY.md puts it
    query = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert lock.optional_requirements(["pyarrow"]) == [r for r in query["query"] if r.startswith("pyarrow")]


def test_deploy_md_adds_pyarrow_to_requirements_txt_as_an_exact_pin() -> None:
    """The scheduled export needs pyarrow in the deployment. requirements.txt holds exact pins only (the test
    above), so the line DEPLOY.md appends must be one too: the version tested here, inside the query extra's
    range, with no dependency of its own left unpinned."""
    import tomllib

    from packaging.requirements import Requirement

    section = _deploy_section("### Scheduled export")
    appended = re.findall(r"^echo '([^']+)' >> requirements\.txt", section, re.M)
    assert appended, "docs/DEPLOY.md no longer says how to add pyarrow"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extra = {_norm(Requirement(r).name): Requirement(r) for r in project["optional-dependencies"]["query"]}
    pins = {_norm(m.group(1)) for line in _requirement_lines(ROOT / "requirements.txt")
            if (m := re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==\S+", line))}
    for line in appended:
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;=<>!~]+)", line)
        assert match, f"docs/DEPLOY.md appends {line!r} to requirements.txt: not an exact pin (name==version)"
        name, version = _norm(match.group(1)), match.group(2)
        assert name in extra and extra[name].specifier.contains(version), f"{line}: not in the query extra's range"
        distribution = importlib.metadata.distribution(name)
        assert distribution.version == version, f"{line}: the tested version is {distribution.version}"
        unpinned = [r for r in map(Requirement, distribution.requires or [])
                    if not r.marker and _norm(r.name) not in pins]
        assert not unpinned, f"{line} needs {unpinned}, which requirements.txt does not pin"


def test_every_azd_value_the_docs_and_the_hook_use_is_an_output(templates: dict[str, dict[str, Any]]) -> None:
    """A name in `azd env get-value NAME` (DEPLOY.md, the APIM example), in the sample of `azd env
    get-values`, or among the outputs the postprovision hook reads, that main.bicep does not output
    gives a user an empty variable and a command that fails far from the cause."""
    outputs = set(templates[MAIN]["outputs"])
    docs = {path: path.read_text(encoding="utf-8") for path in (DEPLOY_MD, ROOT / "examples" / "apim" / "README.md")}
    used = {(path.name, name) for path, text in docs.items() for name in re.findall(r"azd env get-value (\w+)", text)}
    sample = re.search(r"azd env get-values\n((?:# \w+=.*\n)+)", docs[DEPLOY_MD])
    assert sample, "DEPLOY.md shows a sample of `azd env get-values`"
    used |= {("DEPLOY.md sample", name) for name in re.findall(r"^# (\w+)=", sample.group(1), re.M)}
    hook = HOOK.read_text(encoding="utf-8")
    said = re.search(r"the first (\w+) are outputs of main\.bicep\):\n((?:#   \w+ .*\n)+)", hook)
    assert said, "the hook lists the outputs it reads"
    count = ["one", "two", "three", "four", "five", "six"].index(said.group(1)) + 1
    used |= {("postprovision.sh", name) for name in re.findall(r"^#   (\w+)", said.group(2), re.M)[:count]}
    assert {name for _, name in used} >= {"INGEST_URL", "KEY_VAULT_NAME", "LOGS_STORAGE_URL", "FUNCTION_APP_ID"}
    missing = sorted((where, name) for where, name in used if name not in outputs)
    assert not missing, f"not outputs of infra/{MAIN}: {missing}"
