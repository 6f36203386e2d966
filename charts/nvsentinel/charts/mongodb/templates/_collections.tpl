{{- /*
mongodb.collections: the collections and indexes NVSentinel's services expect
in auth.database, as JSON for the init Job (files/init-collections.js applies
it). The same collection names, index keys, options and names as NVSentinel's
mongodb-store chart: its store-client reads HealthEvents, MaintenanceEvents and
ResumeTokens (its defaults). An index without "name" gets MongoDB's default
name (<field>_<direction> joined by "_"), as mongosh's createIndex gives it.
Keys are lists of [field, direction] pairs: their order is the index's.
*/ -}}
{{- define "mongodb.collections" -}}
{{- $ttl := int64 .Values.collectionExpirySeconds -}}
{
  "database": {{ .Values.auth.database | toJson }},
  "collections": [
    {
      "name": "HealthEvents",
      "indexes": [
        {"key": [["createdAt", 1]], "expireAfterSeconds": {{ $ttl }}},
        {"key": [["createdAt", 1], ["_id", 1]]},
        {
          "name": "idx_health_events_analyzer_lookup",
          "key": [["healthevent.agent", 1], ["healthevent.checkname", 1], ["healthevent.nodename", 1], ["createdAt", -1]]
        },
        {"key": [["healthevent.agent", 1], ["healthevent.componentclass", 1], ["healthevent.checkname", 1], ["healthevent.nodename", 1], ["healthevent.version", 1], ["createdAt", 1], ["_id", 1]]},
        {"key": [["healthevent.nodename", 1], ["healthevent.entitiesimpacted.entitytype", 1], ["healthevent.entitiesimpacted.entityvalue", 1], ["healthevent.generatedtimestamp.seconds", 1]]},
        {"key": [["healthevent.nodename", 1], ["healthevent.ishealthy", 1], ["healthevent.generatedtimestamp.seconds", 1]]},
        {"key": [["healthevent.nodename", 1], ["healtheventstatus.faultremediated.value", 1], ["healthevent.isfatal", 1], ["healthevent.generatedtimestamp.seconds", 1]]}
      ]
    },
    {
      "name": "MaintenanceEvents",
      "indexes": [
        {"key": [["actualEndTime", 1]], "expireAfterSeconds": {{ $ttl }}},
        {"key": [["scheduledStartTime", 1]]},
        {"key": [["cspStatus", 1]]}
      ]
    },
    {"name": "ResumeTokens", "indexes": []}
  ]
}
{{- end -}}
