// The storage account that holds the encrypted log blobs (date-named append blobs in one
// container). Entra ID only: no shared keys, no anonymous access, HTTPS + TLS 1.2.
//
// The app's identity gets a custom role on the logs container only, with the least it needs to
// create append blobs and append to them: no delete, no container create/delete, no access to
// other containers. Every read, write and delete of a blob is logged to Log Analytics
// (StorageBlobLogs), and a CanNotDelete lock keeps the account out of `azd down`.

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

@description('Blob-name prefix inside the container (BLOBWRITER_BLOB_PREFIX); the lifecycle rule matches it.')
param blobPrefix string = ''

@description('Days after the last append before a log blob is deleted by lifecycle management; 0 = keep forever. Lifecycle can only delete append blobs (they cannot change tier). Must exceed immutabilityDays when both are set.')
@minValue(0)
param daysToDelete int = 365

@description('Time-based retention (WORM) on the logs container in days; 0 = off. Appends stay allowed; nothing can be changed or deleted until the period ends.')
@minValue(0)
@maxValue(146000)
param immutabilityDays int = 0

@description('Set to true once the immutability policy is locked: a locked policy can only be extended, so the template must stop sending it.')
param immutabilityLocked bool = false

@description('Days deleted blobs and containers stay recoverable (soft delete).')
@minValue(1)
@maxValue(365)
param softDeleteDays int = 7

@description('Principal id of the function app identity (gets the log appender role on the container).')
param appPrincipalId string

@description('Resource id of the Log Analytics workspace that receives the blob access logs.')
param logAnalyticsWorkspaceId string

@description('Put a CanNotDelete lock on the account, so that neither `azd down` nor a resource group delete can remove the logs.')
param deleteLock bool = true

// The narrowest role that can create append blobs and append to them (Put Blob of an append blob,
// Append Block: blobs/write or blobs/add/action), find the current part (List Blobs: blobs/read)
// and probe the container (Get Container Properties: containers/read). No delete of any kind, no
// container create or delete. blobs/write would also let a caller replace an existing blob;
// blobwriter never does (it creates parts with If-None-Match: *), and immutability forbids it.
var appenderActions = [
  'Microsoft.Storage/storageAccounts/blobServices/containers/read'
]
var appenderDataActions = [
  'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read'
  'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write'
  'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/add/action'
]

var prefix = '${containerName}/${blobPrefix}'
// Lifecycle management can only delete append blobs: tierToCool/tierToArchive apply to block
// blobs alone, so a tiering rule would never touch what blobwriter writes.
var deleteRule = {
  name: 'delete-old-logs'
  enabled: true
  type: 'Lifecycle'
  definition: {
    filters: {
      blobTypes: [
        'appendBlob'
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

// Unlocked time-based retention. Once you lock it (docs/DEPLOY.md), set immutabilityLocked: the
// template then leaves the policy alone, because ARM refuses any PUT of a locked policy that is
// not an extension, and the deployment (and with it every later provision) would fail.
resource immutability 'Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies@2023-05-01' = if ((immutabilityDays > 0) && !immutabilityLocked) {
  parent: logsContainer
  name: 'default'
  properties: {
    immutabilityPeriodSinceCreationInDays: immutabilityDays
    allowProtectedAppendWrites: true
  }
}

resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = if (daysToDelete > 0) {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        deleteRule
      ]
    }
  }
}

// Custom roles are subscription-wide objects: the name is unique per account, the GUID per
// resource group and account, so two environments never share (or fight over) one definition.
resource appenderRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, storage.name, 'blobwriter-log-appender')
  properties: {
    roleName: 'blobwriter log appender (${storage.name})'
    description: 'blobwriter: list, create and append to the log blobs of one container; no delete.'
    type: 'CustomRole'
    assignableScopes: [
      resourceGroup().id
    ]
    permissions: [
      {
        actions: appenderActions
        notActions: []
        dataActions: appenderDataActions
        notDataActions: []
      }
    ]
  }
}

resource appAppender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(logsContainer.id, appPrincipalId, 'blobwriter-log-appender')
  scope: logsContainer
  properties: {
    roleDefinitionId: appenderRole.id
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Who read, wrote or deleted which blob, with which identity: the StorageBlobLogs table.
resource blobAccessLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'blob-access-to-log-analytics'
  scope: blobService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

// Blocks deleting the account, and with it any delete of this resource group (`azd down`
// included): Azure never deletes a group partly. Data-plane deletes are not blocked by a lock;
// the app's role has no delete, and soft delete / immutability cover the rest.
resource accountLock 'Microsoft.Authorization/locks@2020-05-01' = if (deleteLock) {
  name: 'blobwriter-logs-cannot-delete'
  scope: storage
  properties: {
    level: 'CanNotDelete'
    notes: 'Audit logs: remove this lock deliberately before deleting the account (docs/DEPLOY.md, Tearing down).'
  }
}

output name string = storage.name
output id string = storage.id
// The account's blob endpoint without the trailing slash: https://<account>.blob.core.windows.net
output blobEndpoint string = 'https://${storage.name}.blob.${environment().suffixes.storage}'
output containerName string = logsContainer.name
output appenderRoleName string = appenderRole.properties.roleName
