// Key Vault (RBAC authorization, soft delete, purge protection) for blobwriter's keys: the
// AES-256-GCM encryption key and the previous keys kept for reading after a rotation.
//
// The template never writes a secret value. infra/hooks/postprovision.sh creates each secret
// once, only when it does not exist, so a provision from a fresh clone (or any later provision)
// can never replace the key; rotation adds secret versions by hand (docs/DEPLOY.md). Because
// the secrets may not exist yet when this runs, the app's read access is granted on the vault:
// the vault is blobwriter's alone and holds nothing but these two secrets.

@description('Name of the Key Vault (3-24 letters, digits and hyphens).')
param name string

@description('Azure region.')
param location string

@description('Tags for the vault.')
param tags object = {}

@description('Name of the secret holding the current encryption key (made by the postprovision hook).')
param encryptionKeySecretName string = 'blobwriter-encryption-key'

@description('Name of the secret holding the previous keys, comma-separated (made by the postprovision hook with the placeholder "," = none).')
param previousKeysSecretName string = 'blobwriter-previous-keys'

@description('Principal id of the function app identity (gets Key Vault Secrets User).')
param appPrincipalId string

@description('Principal id of whoever runs `azd provision` (azd: AZURE_PRINCIPAL_ID); gets Key Vault Secrets Officer so the hook can create the key. Empty = grant nothing.')
param deployerPrincipalId string = ''

@description('Type of deployerPrincipalId: User for a person, ServicePrincipal for CI.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param deployerPrincipalType string = 'User'

@description('Resource id of the Log Analytics workspace that receives the vault audit log.')
param logAnalyticsWorkspaceId string

@description('Put a CanNotDelete lock on the vault, so that neither `azd down` nor a resource group delete can remove the keys.')
param deleteLock bool = true

@description('Days a deleted vault or secret stays recoverable.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

// Built-in roles: Key Vault Secrets User (read secret values), Key Vault Secrets Officer (manage secrets).
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'
var keyVaultSecretsOfficerRoleId = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  //checkov:skip=CKV_AZURE_109: the Flex Consumption app has no VNet here and Key Vault references do not pass the trusted-services bypass, so the firewall must allow public traffic; every read needs Entra ID + RBAC
  //checkov:skip=CKV_AZURE_189: same reason: no private endpoint in this deployment, so public network access stays enabled (RBAC still gates every secret read)
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

// The app reads both secrets through Key Vault references. Granted in the first deployment, on
// the vault, so a rotation never needs a new role assignment (which could take minutes to apply
// while the app already references the secret).
resource appSecretsReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, appPrincipalId, keyVaultSecretsUserRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource deployerSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(vault.id, deployerPrincipalId, keyVaultSecretsOfficerRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsOfficerRoleId)
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
  }
}

// Who read or changed which secret, with which identity: AuditEvent in the workspace.
resource auditLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'AuditEvent'
        enabled: true
      }
    ]
  }
}

// Blocks deleting the vault, and with it any delete of this resource group (`azd down` included).
resource vaultLock 'Microsoft.Authorization/locks@2020-05-01' = if (deleteLock) {
  name: 'blobwriter-keys-cannot-delete'
  scope: vault
  properties: {
    level: 'CanNotDelete'
    notes: 'Holds the keys that decrypt the audit logs: remove this lock deliberately (docs/DEPLOY.md, Tearing down).'
  }
}

output name string = vault.name
output vaultUri string = vault.properties.vaultUri
// Versionless secret URIs (not the values): the app always resolves the latest version.
output encryptionKeyUri string = '${vault.properties.vaultUri}secrets/${encryptionKeySecretName}'
output previousKeysUri string = '${vault.properties.vaultUri}secrets/${previousKeysSecretName}'
output encryptionKeyName string = encryptionKeySecretName
output previousKeysName string = previousKeysSecretName
