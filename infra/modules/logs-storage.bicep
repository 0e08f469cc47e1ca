// The storage account that holds the encrypted log blobs (date-named append blobs in one
// container). Entra ID only: no shared keys, no anonymous access, HTTPS + TLS 1.2. The app's
// identity gets Storage Blob Data Contributor on the logs container only.

@description('Name of the logs storage account (3-24 lowercase letters and digits).')
param name string

@description('Azure region.')
param location string

@description('Tags for the account.')
param tags object = {}

@description('Redundancy of the logs account. Geo-redundant by default: these are audit logs.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param skuName string = 'Standard_GRS'

@description('Blob container that holds the log blobs (BLOBWRITER_CONTAINER).')
param containerName string

@description('Blob-name prefix inside the container (BLOBWRITER_BLOB_PREFIX); lifecycle rules match it.')
param blobPrefix string = ''

@description('Days after the last append before block blobs in the logs container move to the cool tier; 0 = never. Append blobs (what blobwriter writes) cannot change tier, so this only affects block blobs.')
@minValue(0)
param daysToCool int = 30

@description('Days after the last append before log blobs are deleted; 0 = keep forever. Must exceed immutabilityDays when both are set.')
@minValue(0)
param daysToDelete int = 365

@description('Time-based retention (WORM) on the logs container in days; 0 = off. Appends stay allowed; nothing can be changed or deleted until the period ends.')
@minValue(0)
@maxValue(146000)
param immutabilityDays int = 0

@description('Days deleted blobs and containers stay recoverable (soft delete).')
@minValue(1)
@maxValue(365)
param softDeleteDays int = 7

@description('Principal id of the function app identity (gets Storage Blob Data Contributor on the container).')
param appPrincipalId string

// Built-in role: Storage Blob Data Contributor.
var storageBlobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

var prefix = '${containerName}/${blobPrefix}'
var deleteRule = {
  name: 'delete-old-logs'
  enabled: true
  type: 'Lifecycle'
  definition: {
    filters: {
      blobTypes: [
        'appendBlob'
        'blockBlob'
      ]
      prefixMatch: [
        prefix
      ]
    }
    actions: {
      baseBlob: {
        delete: {
          daysAfterModificationGreaterThan: daysToDelete
        }
      }
    }
  }
}
var coolRule = {
  name: 'cool-old-logs'
  enabled: true
  type: 'Lifecycle'
  definition: {
    filters: {
      blobTypes: [
        'blockBlob'
      ]
      prefixMatch: [
        prefix
      ]
    }
    actions: {
      baseBlob: {
        tierToCool: {
          daysAfterModificationGreaterThan: daysToCool
        }
      }
    }
  }
}
var lifecycleRules = concat(daysToDelete > 0 ? [deleteRule] : [], daysToCool > 0 ? [coolRule] : [])

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  //checkov:skip=CKV_AZURE_35: the Flex Consumption app has no VNet here, so the account must accept public traffic; every request needs Entra ID (shared keys are off)
  //checkov:skip=CKV_AZURE_59: same reason: no VNet/private endpoint in this deployment; shared keys and anonymous blob access are off
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
  }
}

resource logsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: containerName
  properties: {
    publicAccess: 'None'
  }
}

// Unlocked time-based retention: lock it by hand once you are sure of the period (see docs/DEPLOY.md).
resource immutability 'Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies@2023-05-01' = if (immutabilityDays > 0) {
  parent: logsContainer
  name: 'default'
  properties: {
    immutabilityPeriodSinceCreationInDays: immutabilityDays
    allowProtectedAppendWrites: true
  }
}

resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = if (!empty(lifecycleRules)) {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: lifecycleRules
    }
  }
}

resource appBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(logsContainer.id, appPrincipalId, storageBlobDataContributorRoleId)
  scope: logsContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributorRoleId)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output name string = storage.name
// The account's blob endpoint without the trailing slash: https://<account>.blob.core.windows.net
output blobEndpoint string = 'https://${storage.name}.blob.${environment().suffixes.storage}'
output containerName string = logsContainer.name
