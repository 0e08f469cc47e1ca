#!/bin/sh
# azd postprovision hook (azure.yaml): make sure blobwriter's Key Vault holds its two secrets.
#
#   blobwriter-encryption-key   the AES-256-GCM key: made here once, only if the secret does not exist
#   blobwriter-previous-keys    older keys, for reading after a rotation: made here as "," (= none)
#
# It never overwrites a secret, never rotates, and never prints or passes a key on a command
# line (the key goes to `az` through a private temporary file). A secret that exists is left
# alone, whoever provisions and from whichever clone. A soft-deleted secret stops the hook:
# making a new key then would orphan every blob written with the old one; recover it instead.
#
# Environment (azd hands its environment to hooks; the first four are outputs of main.bicep):
#   KEY_VAULT_NAME                 required
#   ENCRYPTION_KEY_NAME            default blobwriter-encryption-key
#   PREVIOUS_KEYS_NAME             default blobwriter-previous-keys
#   FUNCTION_APP_ID                if set, the app's Key Vault references are refreshed after a secret is made
#   BLOBWRITER_RBAC_WAIT_SECONDS   how long to wait for a new role assignment to apply (default 600)
#   BLOBWRITER_RBAC_RETRY_SECONDS  first pause between those retries (default 5, doubling up to 30)
# Needs: az (signed in with `az login`), and python3 or openssl for the random key.
set -eu

log() { printf 'blobwriter postprovision: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

vault=${KEY_VAULT_NAME:-}
[ -n "$vault" ] || die "KEY_VAULT_NAME is not set. It is an output of infra/main.bicep: run \`azd provision\` (or \`azd env refresh\`) first."
key_name=${ENCRYPTION_KEY_NAME:-blobwriter-encryption-key}
prev_name=${PREVIOUS_KEYS_NAME:-blobwriter-previous-keys}
wait_max=${BLOBWRITER_RBAC_WAIT_SECONDS:-600}
first_delay=${BLOBWRITER_RBAC_RETRY_SECONDS:-5}
command -v az >/dev/null 2>&1 || die "the Azure CLI (az) is not on PATH; install it and run \`az login\`."

umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# secret_state NAME: prints present, absent or deleted; fails (after printing az's error) otherwise.
secret_state() {
    name=$1
    waited=0
    delay=$first_delay
    while :; do
        if az keyvault secret show --vault-name "$vault" --name "$name" --query id --output tsv \
            >"$tmp/out" 2>"$tmp/err"; then
            echo present
            return 0
        fi
        if grep -q 'SecretNotFound' "$tmp/err"; then
            if az keyvault secret show-deleted --vault-name "$vault" --name "$name" --query recoveryId \
                --output tsv >"$tmp/out" 2>"$tmp/err"; then
                echo deleted
                return 0
            fi
            if grep -q 'NotFound' "$tmp/err"; then
                echo absent
                return 0
            fi
            cat "$tmp/err" >&2
            return 1
        fi
        if grep -qi 'disabled' "$tmp/err"; then
            cat "$tmp/err" >&2
            log "secret $name exists in $vault but its current version is disabled; enable it (az keyvault secret set-attributes --enabled true ...). Nothing was changed."
            return 1
        fi
        if grep -qi 'forbidden' "$tmp/err" && [ "$waited" -lt "$wait_max" ]; then
            log "no access to secrets in $vault yet (a new role assignment can take minutes to apply); retrying in ${delay}s"
            sleep "$delay"
            waited=$((waited + delay))
            if [ "$delay" -lt 30 ]; then delay=$((delay * 2)); fi
            if [ "$delay" -gt 30 ]; then delay=30; fi
            continue
        fi
        cat "$tmp/err" >&2
        if grep -qi 'forbidden' "$tmp/err"; then
            log "still no access to secrets in $vault after ${waited}s. The deployer needs Key Vault Secrets Officer on the vault (main.bicep grants it to AZURE_PRINCIPAL_ID); check \`az account show\` is the identity azd provisioned with."
        fi
        return 1
    done
}

new_key() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import base64, os, sys; sys.stdout.write(base64.b64encode(os.urandom(32)).decode())'
    elif command -v openssl >/dev/null 2>&1; then
        openssl rand -base64 32 | tr -d '\n'
    else
        return 1
    fi
}

# put_secret NAME FILE CONTENT_TYPE
put_secret() {
    az keyvault secret set --vault-name "$vault" --name "$1" --file "$2" --encoding utf-8 \
        --content-type "$3" --query id --output tsv >/dev/null
}

made=0

# ensure NAME KIND: KIND is key (a new random key) or placeholder (",": no previous keys).
ensure() {
    name=$1
    kind=$2
    state=$(secret_state "$name") || die "could not tell whether secret $name exists in $vault (see above). Nothing was changed."
    case $state in
        present)
            log "secret $name exists in $vault: left as it is"
            ;;
        deleted)
            die "secret $name in $vault is soft-deleted. Recover it (az keyvault secret recover --vault-name $vault --name $name) and run \`azd provision\` again. A new key would make every blob written with the old one unreadable, so none is made."
            ;;
        absent)
            if [ "$kind" = key ]; then
                new_key >"$tmp/value" || die "cannot make a random key: neither python3 nor openssl is on PATH"
                put_secret "$name" "$tmp/value" "text/plain; base64 AES-256-GCM key (blobwriter)" \
                    || die "could not create secret $name in $vault (see above)"
                log "created secret $name in $vault with a new random key (its value is not shown; keep a copy in your own secret store: losing it loses the logs)"
            else
                printf ',' >"$tmp/value"
                put_secret "$name" "$tmp/value" "text/plain; comma-separated base64 AES-256-GCM keys (blobwriter); ',' = none" \
                    || die "could not create secret $name in $vault (see above)"
                log "created secret $name in $vault with the placeholder ',' (no previous keys)"
            fi
            rm -f "$tmp/value"
            versions=$(az keyvault secret list-versions --vault-name "$vault" --name "$name" --query 'length(@)' --output tsv) || versions=1
            if [ "$versions" != 1 ]; then
                log "WARNING: secret $name now has $versions versions: someone else created it at the same time. Entries may have been written with the other version; add its value to $prev_name (docs/DEPLOY.md, Key rotation)."
            fi
            made=1
            ;;
        *)
            die "unexpected state '$state' for secret $name"
            ;;
    esac
}

ensure "$key_name" key
ensure "$prev_name" placeholder

if [ "$made" = 1 ] && [ -n "${FUNCTION_APP_ID:-}" ]; then
    # App Service caches Key Vault reference values for up to 24 h; ask for a fresh read now.
    if az rest --method post --url "${FUNCTION_APP_ID}/config/configreferences/appsettings/refresh?api-version=2022-03-01" \
        --output none 2>"$tmp/err"; then
        log "asked the function app to re-read its Key Vault references"
    else
        cat "$tmp/err" >&2
        log "WARNING: could not refresh the app's Key Vault references; they refresh by themselves within 24 h, or at the next deploy."
    fi
fi
