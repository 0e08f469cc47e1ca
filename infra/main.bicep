// blobwriter on Azure: a Flex Consumption function app that accepts log entries over HTTPS and
// appends them, gzipped and AES-256-GCM encrypted, to date-named append blobs in a logs storage
// account. Deploy with `azd up` (see docs/DEPLOY.md). Nothing here uses a storage account key:
// the app, the Functions host and the deployment all use one user-assigned managed identity.
// No key passes through this template either: infra/hooks/postprovision.sh makes the Key Vault
// secrets once, when missing. The logs account and the vault carry delete locks (deleteLocks).

targetScope = 'subscription'

// ---------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('azd environment name; names the resource group and seeds unique resource names.')
param environmentName string

@minLength(1)
@description('Azure region for every resource; must support Flex Consumption (az functionapp list-flexconsumption-locations).')
param location string

@description('Resource group to create/use; empty = rg-<environmentName>.')
param resourceGroupName string = ''

// ---------------------------------------------------------------------------------------------
// Keys: no parameter carries a key. The Key Vault secrets are made once, when missing, by
// infra/hooks/postprovision.sh (azure.yaml); this template only names them.
// ---------------------------------------------------------------------------------------------

@description('Principal id of whoever runs `azd provision` (azd fills AZURE_PRINCIPAL_ID); gets Key Vault Secrets Officer on the vault so the postprovision hook can create the key. Empty = grant nothing.')
param principalId string = ''

@description('Type of principalId: User for a person, ServicePrincipal for a CI identity.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

// ---------------------------------------------------------------------------------------------
// Hosting
// ---------------------------------------------------------------------------------------------

@description('Memory per instance in MB (Flex Consumption: 512, 2048 or 4096). Must hold the queue (maxQueueSize entries, ~2 KB each) plus the bodies of perInstanceConcurrency requests; see docs/DEPLOY.md, Sizing.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Most instances the app scales out to (Flex Consumption accepts 40-1000). Each instance appends to blobs of its own (one per date), so the ~500 requests/s target of one blob applies per instance; instances share the account\'s limits. It caps cost; see docs/DEPLOY.md, Sizing.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Concurrent HTTP requests per instance before Flex adds an instance (Python default: 1). At least batchSize x maxConcurrentWrites so that callers waiting for their append can fill every batch; see docs/DEPLOY.md, Sizing.')
@minValue(1)
@maxValue(1000)
param perInstanceConcurrency int = 256

@description('How a deploy or setting change replaces instances: RollingUpdate drains them (in-flight requests finish; preview feature), Recreate restarts all at once and cuts in-flight requests.')
@allowed([
  'RollingUpdate'
  'Recreate'
])
param siteUpdateStrategy string = 'RollingUpdate'

// ---------------------------------------------------------------------------------------------
// Logs storage: retention and audit
// ---------------------------------------------------------------------------------------------

@description('Redundancy of the logs storage account.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param logsStorageSku string = 'Standard_GRS'

@description('Lifecycle: days after the last append before a log blob is deleted; 0 = keep forever. Deleting is all lifecycle management can do with append blobs: they cannot move to cool or archive. Must be larger than immutabilityDays when both are set.')
@minValue(0)
param daysToDelete int = 365

@description('Time-based immutability (WORM) on the logs container, in days; 0 = off. Appends stay allowed.')
@minValue(0)
@maxValue(146000)
param immutabilityDays int = 0

@description('Set to true (azd: BLOBWRITER_IMMUTABILITY_LOCKED) once you have locked the immutability policy: a locked policy can only be extended, so the template must stop sending it.')
param immutabilityLocked bool = false

@description('CanNotDelete locks on the logs storage account and the Key Vault: `azd down` (any delete of the resource group) then fails and deletes nothing. Turn off only for throwaway environments.')
param deleteLocks bool = true

@description('Days Log Analytics keeps the app\'s telemetry.')
@minValue(30)
@maxValue(730)
param logAnalyticsRetentionDays int = 30

// ---------------------------------------------------------------------------------------------
// blobwriter settings (BLOBWRITER_*). Defaults are the app's defaults (blobwriter/config.py);
// parameter names are the setting names in camelCase. Numbers with a fraction are strings
// because Bicep has no float type.
// ---------------------------------------------------------------------------------------------

@description('BLOBWRITER_CONTAINER: blob container that holds the log blobs.')
@minLength(3)
@maxLength(63)
param container string = 'logs'

@description('BLOBWRITER_BLOB_PREFIX: blob-name prefix inside the container (e.g. \'gateway/\').')
param blobPrefix string = ''

@description('BLOBWRITER_COMPRESSION: gzip or none.')
@allowed([
  'gzip'
  'none'
])
param compression string = 'gzip'

@description('BLOBWRITER_BATCH_SIZE: most entries in one batch (1-1000).')
param batchSize int = 10

@description('BLOBWRITER_BATCH_TIMEOUT: seconds a partial batch waits before it is written (0.1-60).')
param batchTimeout string = '1.0'

@description('BLOBWRITER_MAX_QUEUE_SIZE: most accepted-but-unwritten entries per instance before HTTP 503.')
param maxQueueSize int = 250000

@description('BLOBWRITER_MAX_QUEUE_BYTES: most serialized bytes of accepted-but-unwritten entries per instance before HTTP 503.')
param maxQueueBytes int = 268435456

@description('BLOBWRITER_MAX_CONCURRENT_WRITES: most appends in flight at once per instance.')
param maxConcurrentWrites int = 16

@description('BLOBWRITER_MAX_APPEND_BYTES: largest Append Block call, and so the largest frame (64 KiB - 4 MiB).')
param maxAppendBytes int = 4194304

@description('BLOBWRITER_MAX_BLOCKS_PER_BLOB: frames per blob before rolling to the next part (max 50000).')
param maxBlocksPerBlob int = 50000

@description('BLOBWRITER_MAX_ENTRY_BYTES: largest serialized entry accepted.')
param maxEntryBytes int = 1048576

@description('BLOBWRITER_MAX_BODY_BYTES: largest HTTP request body accepted.')
param maxBodyBytes int = 10485760

@description('BLOBWRITER_STORAGE_TIMEOUT: seconds one storage request may take before it is retried.')
param storageTimeout string = '30.0'

@description('BLOBWRITER_RETRY_BACKOFF_MAX: longest pause in seconds between retries of a failed append.')
param retryBackoffMax string = '30.0'

@description('BLOBWRITER_GIVE_UP_AFTER: seconds an append error that retrying cannot heal (403, a leased or sealed blob) is retried before its entries are reported failed.')
param giveUpAfter string = '300.0'

@description('BLOBWRITER_STOP_TIMEOUT: seconds shutdown keeps retrying unwritten entries.')
param stopTimeout string = '60.0'

@description('BLOBWRITER_ID_FIELD: an entry field that identifies a request (e.g. id): readers and the scheduled export keep the first entry of each value. Empty = off.')
param idField string = ''

@description('BLOBWRITER_ACK: when POST /api/logs answers. written = 200 once appended (nothing answered can be lost to a deploy or restart); queued = 202 once queued in memory. A request\'s ?wait=true|false overrides it.')
@allowed([
  'written'
  'queued'
])
param ack string = 'written'

// What an entry may be, and what of it is kept (README: "Timestamps", "Privacy controls"). The
// window is bounded here although the app's default is no bound: a live gateway logs calls as
// they happen, and a client must not backdate entries into days already audited. A string, so
// that '' (no bound) can be deployed for a backfill.
@description('BLOBWRITER_MAX_PAST_DAYS: refuse entries whose timestamp is more than this many days before the server\'s clock (\'\' for no bound; the app\'s default is no bound).')
param maxPastDays string = '7'

@description('BLOBWRITER_MAX_FUTURE_DAYS: refuse entries whose timestamp is more than this many days after the server\'s clock (\'\' for no bound; the app\'s default is no bound).')
param maxFutureDays string = '1'

@description('BLOBWRITER_RECEIVED_AT_FIELD: top-level field the writer stamps with the server\'s receive time (\'\' for none).')
param receivedAtField string = ''

@description('BLOBWRITER_DROP_FIELDS: comma-separated dotted paths removed from every entry before it is encrypted (e.g. \'request.messages.*.content\').')
param dropFields string = ''

@description('BLOBWRITER_MASK_FIELDS: comma-separated dotted paths whose values are replaced by "[masked]" before encryption.')
param maskFields string = ''

@description('BLOBWRITER_TRUNCATE_BYTES: strings longer than this many UTF-8 bytes are cut and marked (\'\' for no limit; at least 64).')
param truncateBytes string = ''

@description('BLOBWRITER_METADATA_ONLY: drop the request and response bodies (the top-level request and response fields) from every entry.')
param metadataOnly bool = false

// The scheduled export (docs/DEPLOY.md, "Scheduled export"). A parameter, not a setting made by hand:
// every provision replaces the app's whole list of app settings with the one below, so a hand-made
// setting would vanish at the next `azd provision`, and the timer with it, without an error.
@description('BLOBWRITER_EXPORT_DESTINATION (azd: BLOBWRITER_EXPORT_DESTINATION): where the hourly timer exports each closed day as Parquet, an https container URL that the app\'s identity may write (e.g. https://<account>.blob.core.windows.net/exports/gateway), or a Key Vault reference to a connection string. Empty = the timer is not registered. Needs pyarrow in requirements.txt.')
param exportDestination string = ''

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

var token = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  app: 'blobwriter'
}
var deploymentContainerName = 'app-package-${take(token, 8)}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-blobwriter-${token}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${token}'
    applicationInsightsName: 'appi-${token}'
    location: location
    tags: tags
    retentionInDays: logAnalyticsRetentionDays
    appPrincipalId: identity.outputs.principalId
  }
}

module hostStorage 'modules/host-storage.bicep' = {
  name: 'host-storage'
  scope: rg
  params: {
    name: 'sthost${token}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    appPrincipalId: identity.outputs.principalId
  }
}

module logsStorage 'modules/logs-storage.bicep' = {
  name: 'logs-storage'
  scope: rg
  params: {
    name: 'stlogs${token}'
    location: location
    tags: tags
    skuName: logsStorageSku
    containerName: container
    blobPrefix: blobPrefix
    daysToDelete: daysToDelete
    immutabilityDays: immutabilityDays
    immutabilityLocked: immutabilityLocked
    appPrincipalId: identity.outputs.principalId
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
    deleteLock: deleteLocks
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv-${token}'
    location: location
    tags: tags
    appPrincipalId: identity.outputs.principalId
    deployerPrincipalId: principalId
    deployerPrincipalType: principalType
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
    deleteLock: deleteLocks
  }
}

// Every app setting of the function app. tests/test_infra.py checks that each BLOBWRITER_*
// setting of blobwriter/config.py is here (except those only `blobwriter serve` uses: the API key
// and the request-body limits, as under Functions the host checks keys and reads bodies; and
// stats_map, which only `blobwriter stats` reads).
var appSettings = [
  // Functions host storage through the managed identity: endpoints only, no key.
  {
    name: 'AzureWebJobsStorage__blobServiceUri'
    value: hostStorage.outputs.blobEndpoint
  }
  {
    name: 'AzureWebJobsStorage__queueServiceUri'
    value: hostStorage.outputs.queueEndpoint
  }
  {
    name: 'AzureWebJobsStorage__tableServiceUri'
    value: hostStorage.outputs.tableEndpoint
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: identity.outputs.clientId
  }
  // Application Insights with Entra ID auth (local auth is disabled on the component).
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: monitoring.outputs.connectionString
  }
  {
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: 'Authorization=AAD;ClientId=${identity.outputs.clientId}'
  }
  // DefaultAzureCredential picks the user-assigned identity by this client id.
  {
    name: 'AZURE_CLIENT_ID'
    value: identity.outputs.clientId
  }
  // blobwriter
  {
    name: 'BLOBWRITER_STORAGE'
    value: logsStorage.outputs.blobEndpoint
  }
  {
    name: 'BLOBWRITER_CONTAINER'
    value: logsStorage.outputs.containerName
  }
  {
    name: 'BLOBWRITER_BLOB_PREFIX'
    value: blobPrefix
  }
  {
    name: 'BLOBWRITER_ENCRYPTION_KEY'
    value: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.encryptionKeyUri})'
  }
  // Referenced from the first deployment on (the hook stores ',' = none), so a rotation only adds
  // secret versions: no setting, role or reference appears at rotation time.
  {
    name: 'BLOBWRITER_PREVIOUS_KEYS'
    value: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.previousKeysUri})'
  }
  {
    name: 'BLOBWRITER_COMPRESSION'
    value: compression
  }
  {
    name: 'BLOBWRITER_BATCH_SIZE'
    value: string(batchSize)
  }
  {
    name: 'BLOBWRITER_BATCH_TIMEOUT'
    value: batchTimeout
  }
  {
    name: 'BLOBWRITER_MAX_QUEUE_SIZE'
    value: string(maxQueueSize)
  }
  {
    name: 'BLOBWRITER_MAX_QUEUE_BYTES'
    value: string(maxQueueBytes)
  }
  {
    name: 'BLOBWRITER_MAX_CONCURRENT_WRITES'
    value: string(maxConcurrentWrites)
  }
  {
    name: 'BLOBWRITER_MAX_APPEND_BYTES'
    value: string(maxAppendBytes)
  }
  {
    name: 'BLOBWRITER_MAX_BLOCKS_PER_BLOB'
    value: string(maxBlocksPerBlob)
  }
  {
    name: 'BLOBWRITER_MAX_ENTRY_BYTES'
    value: string(maxEntryBytes)
  }
  {
    name: 'BLOBWRITER_MAX_BODY_BYTES'
    value: string(maxBodyBytes)
  }
  {
    name: 'BLOBWRITER_STORAGE_TIMEOUT'
    value: storageTimeout
  }
  {
    name: 'BLOBWRITER_RETRY_BACKOFF_MAX'
    value: retryBackoffMax
  }
  {
    name: 'BLOBWRITER_GIVE_UP_AFTER'
    value: giveUpAfter
  }
  {
    name: 'BLOBWRITER_STOP_TIMEOUT'
    value: stopTimeout
  }
  {
    name: 'BLOBWRITER_ID_FIELD'
    value: idField
  }
  {
    name: 'BLOBWRITER_ACK'
    value: ack
  }
  {
    name: 'BLOBWRITER_MAX_PAST_DAYS'
    value: maxPastDays
  }
  {
    name: 'BLOBWRITER_MAX_FUTURE_DAYS'
    value: maxFutureDays
  }
  {
    name: 'BLOBWRITER_RECEIVED_AT_FIELD'
    value: receivedAtField
  }
  {
    name: 'BLOBWRITER_DROP_FIELDS'
    value: dropFields
  }
  {
    name: 'BLOBWRITER_MASK_FIELDS'
    value: maskFields
  }
  {
    name: 'BLOBWRITER_TRUNCATE_BYTES'
    value: truncateBytes
  }
  {
    name: 'BLOBWRITER_METADATA_ONLY'
    value: string(metadataOnly)
  }
  {
    name: 'BLOBWRITER_EXPORT_DESTINATION'
    value: exportDestination
  }
]

module functionApp 'modules/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  params: {
    name: 'func-blobwriter-${token}'
    planName: 'plan-${token}'
    location: location
    tags: tags
    serviceName: 'api'
    identityId: identity.outputs.id
    deploymentContainerUrl: hostStorage.outputs.deploymentContainerUrl
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    perInstanceConcurrency: perInstanceConcurrency
    siteUpdateStrategy: siteUpdateStrategy
    pythonVersion: '3.11'
    appSettings: appSettings
  }
  // No dependsOn needed: appSettings reads outputs of every other module, so the app is created
  // only after its role assignments (inside those modules) exist.
}

// Outputs: names and URLs only, never a secret (azd stores them in .azure/<env>/.env).
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output SERVICE_API_NAME string = functionApp.outputs.name
output FUNCTION_APP_NAME string = functionApp.outputs.name
output FUNCTION_APP_ID string = functionApp.outputs.id
output INGEST_URL string = 'https://${functionApp.outputs.defaultHostName}/api/logs'
output LOGS_STORAGE_ACCOUNT string = logsStorage.outputs.name
output LOGS_STORAGE_URL string = logsStorage.outputs.blobEndpoint
output LOGS_CONTAINER string = logsStorage.outputs.containerName
output KEY_VAULT_NAME string = keyVault.outputs.name
output ENCRYPTION_KEY_NAME string = keyVault.outputs.encryptionKeyName
output PREVIOUS_KEYS_NAME string = keyVault.outputs.previousKeysName
output LOG_ANALYTICS_WORKSPACE_ID string = monitoring.outputs.logAnalyticsId
output LOGS_APPENDER_ROLE string = logsStorage.outputs.appenderRoleName
