// Flex Consumption (FC1, Linux) plan + the function app: Python 3.11, user-assigned identity,
// HTTPS only, TLS 1.2, FTP and basic-auth publishing off, deployment package pulled from the
// host storage account with the managed identity, Key Vault references resolved with it too.
//
// Flex Consumption rejects many App Service site properties (ARM error 51021, "The following
// site configuration property (...) for Flex Consumption sites is invalid"). siteConfig here
// holds only minTlsVersion and the app settings; runtime, scale, concurrency and the update
// strategy live in functionAppConfig. tests/test_infra.py checks the documented list.

@description('Name of the function app (also its default host name).')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Azure region (must support Flex Consumption).')
param location string

@description('Tags for the plan and the app (the app also gets azd-service-name).')
param tags object = {}

@description('azd service name from azure.yaml; azd finds the app by this tag.')
param serviceName string = 'api'

@description('Resource id of the user-assigned identity the app runs as.')
param identityId string

@description('URL of the blob container that holds the deployment package (host storage).')
param deploymentContainerUrl string

@description('Memory per instance in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Most instances the app scales out to (Flex Consumption accepts 40-1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Concurrent HTTP requests one instance takes before the platform adds another (Flex default for Python: 1).')
@minValue(1)
@maxValue(1000)
param perInstanceConcurrency int = 256

@description('How a deploy or setting change replaces running instances: RollingUpdate drains them (in-flight requests finish), Recreate restarts all at once.')
@allowed([
  'RollingUpdate'
  'Recreate'
])
param siteUpdateStrategy string = 'RollingUpdate'

@description('Python version of the Functions runtime.')
param pythonVersion string = '3.11'

@description('App settings as name/value pairs (see main.bicep).')
param appSettings array

// An API version that has functionAppConfig.siteUpdateStrategy (see Microsoft's "Site update strategies in Flex Consumption").
resource plan 'Microsoft.Web/serverfarms@2024-11-01' = {
  //checkov:skip=CKV_AZURE_225: zone redundancy on Flex Consumption is a regional opt-in with always-ready instances (cost); off by default here
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-11-01' = {
  //checkov:skip=CKV_AZURE_222: the ingest endpoint must be reachable by the log producers; every call needs a function key over HTTPS
  //checkov:skip=CKV_AZURE_17: producers authenticate with function keys; requiring client certificates (mTLS) would need a certificate on every producer
  //checkov:skip=CKV_AZURE_212: Flex Consumption scales out from zero per demand; always-ready instances are an optional cost, not a failover setting
  //checkov:skip=CKV_AZURE_213: App Service health check (instance eviction) is for Dedicated/Premium plans, not Flex Consumption; /api/health serves external probes
  //checkov:skip=CKV_AZURE_78: Flex Consumption rejects siteConfig.ftpsState (ARM 51021) and has no FTP endpoint; FTP publishing is off through the ftp basicPublishingCredentialsPolicies below
  //checkov:skip=CKV_AZURE_18: http20Enabled is an App Service front-end switch that the Flex Consumption portal hides and Microsoft's Flex samples never set; left out so no Flex stamp can reject the site (ARM 51021)
  //checkov:skip=CKV_AZURE_67: same check for function apps: http20Enabled is left out of a Flex Consumption site's siteConfig for the reason above
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identityId
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      appSettings: appSettings
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        triggers: {
          http: {
            perInstanceConcurrency: perInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
      siteUpdateStrategy: {
        type: siteUpdateStrategy
      }
    }
  }
}

// No FTP and no basic-auth (publishing profile) deployments: azd deploys with Entra ID.
// ARM rejects these children without a location (bicep-types-az #1317, #1571; bicep #5531).
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-11-01' = {
  parent: functionApp
  name: 'ftp'
  location: location
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-11-01' = {
  parent: functionApp
  name: 'scm'
  location: location
  properties: {
    allow: false
  }
}

output name string = functionApp.name
output id string = functionApp.id
output defaultHostName string = functionApp.properties.defaultHostName
