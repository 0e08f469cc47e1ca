// Key Vault (RBAC authorization, soft delete, purge protection) holding the AES-256-GCM key
// and, after a rotation, the previous keys. The app reads them through Key Vault references;
// its identity gets Key Vault Secrets User on exactly these secrets, not on the whole vault.
// Secret values come in through @secure() parameters and never leave through an output.

@description('Name of the Key Vault (3-24 letters, digits and hyphens).')
param name string

@description('Azure region.')
param location string

@description('Tags for the vault.')
param tags object = {}

@description('Name of the secret holding the current encryption key.')
param encryptionKeySecretName string = 'blobwriter-encryption-key'

@description('Name of the secret holding the previous keys (comma-separated), created only when previousKeys is set.')
param previousKeysSecretName string = 'blobwriter-previous-keys'

@secure()
@description('Current encryption key: base64 of 32 random bytes (`blobwriter keygen`).')
param encryptionKey string

@secure()
@description('Comma-separated older keys still needed to read old blobs; empty = none.')
param previousKeys string = ''

@description('Principal id of the function app identity (gets Key Vault Secrets User on the secrets).')
param appPrincipalId string

@description('Days a deleted vault or secret stays recoverable.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

// Built-in role: Key Vault Secrets User (read secret values).
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'
var hasPreviousKeys = !empty(previousKeys)

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

resource encryptionKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  //checkov:skip=CKV_AZURE_41: an expiry date would silently stop the app from writing logs; rotation is a deliberate step (docs/DEPLOY.md), and old keys must stay readable for old blobs
  parent: vault
  name: encryptionKeySecretName
  properties: {
    value: encryptionKey
    contentType: 'text/plain; base64 AES-256-GCM key (blobwriter)'
  }
}

resource previousKeysSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (hasPreviousKeys) {
  //checkov:skip=CKV_AZURE_41: older keys are needed for as long as blobs written with them exist, so they must not expire
  //checkov:skip=CKV_AZURE_114: false positive: checkov does not read the properties of a conditional (if) resource; contentType is set below
  parent: vault
  name: previousKeysSecretName
  properties: {
    value: previousKeys
    contentType: 'text/plain; comma-separated base64 AES-256-GCM keys (blobwriter)'
  }
}

resource encryptionKeyReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(encryptionKeySecret.id, appPrincipalId, keyVaultSecretsUserRoleId)
  scope: encryptionKeySecret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource previousKeysReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasPreviousKeys) {
  name: guid(vault.id, previousKeysSecretName, appPrincipalId, keyVaultSecretsUserRoleId)
  scope: previousKeysSecret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output name string = vault.name
output vaultUri string = vault.properties.vaultUri
// Versionless secret URIs (not the values): the app always resolves the latest version.
output encryptionKeyUri string = '${vault.properties.vaultUri}secrets/${encryptionKeySecretName}'
output previousKeysUri string = hasPreviousKeys ? '${vault.properties.vaultUri}secrets/${previousKeysSecretName}' : ''
output encryptionKeyName string = encryptionKeySecretName
