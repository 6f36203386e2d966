{{/*
cert-manager building blocks shared by postgresql-certificates.yaml and
mongodb-certificates.yaml.
*/}}

{{/* nvsentinel.certificates.caName: name of a store's bootstrap CA (Certificate, Secret and CA Issuer); call with (dict "root" $ "provider" "<provider>"). */}}
{{- define "nvsentinel.certificates.caName" -}}
{{- printf "%s-ca" (include "nvsentinel.storeName" .) -}}
{{- end -}}

{{/* nvsentinel.certificates.issuerRef: the issuerRef of a store's leaf certificates: certManager.issuerRef when named, else the store's CA Issuer; call with (dict "root" $ "provider" "<provider>"). */}}
{{- define "nvsentinel.certificates.issuerRef" -}}
{{- $ref := .root.Values.certManager.issuerRef -}}
{{- if $ref.name -}}
name: {{ $ref.name }}
kind: {{ $ref.kind }}
group: {{ $ref.group }}
{{- else -}}
name: {{ include "nvsentinel.certificates.caName" . }}
kind: Issuer
group: cert-manager.io
{{- end -}}
{{- end -}}

{{/* nvsentinel.certificates.privateKey: the privateKey block of every certificate (a new key at each renewal). */}}
{{- define "nvsentinel.certificates.privateKey" -}}
algorithm: {{ .Values.certManager.privateKeyAlgorithm }}
{{- if ne .Values.certManager.privateKeyAlgorithm "Ed25519" }}
size: {{ .Values.certManager.privateKeySize }}
{{- end }}
encoding: PKCS8
rotationPolicy: Always
{{- end -}}

{{/* nvsentinel.certificates.bootstrap: self-signed Issuer, CA Certificate and CA Issuer of a store; nothing when certManager.issuerRef is named; call with (dict "root" $ "provider" "<provider>"). */}}
{{- define "nvsentinel.certificates.bootstrap" -}}
{{- $root := .root -}}
{{- if not $root.Values.certManager.issuerRef.name -}}
{{- $store := include "nvsentinel.storeName" . -}}
{{- $ca := include "nvsentinel.certificates.caName" . -}}
{{- $labels := include "nvsentinel.labels" (dict "root" $root "component" (printf "%s-certificates" .provider)) -}}
apiVersion: cert-manager.io/v1
kind: Issuer
metadata:
  name: {{ printf "%s-selfsigned" $store }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- $labels | nindent 4 }}
spec:
  selfSigned: {}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ $ca }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- $labels | nindent 4 }}
spec:
  isCA: true
  commonName: {{ $ca }}
  secretName: {{ $ca }}
  secretTemplate:
    labels:
      {{- $labels | nindent 6 }}
  duration: {{ $root.Values.certManager.caDuration }}
  privateKey:
    {{- include "nvsentinel.certificates.privateKey" $root | nindent 4 }}
  issuerRef:
    name: {{ printf "%s-selfsigned" $store }}
    kind: Issuer
    group: cert-manager.io
---
apiVersion: cert-manager.io/v1
kind: Issuer
metadata:
  name: {{ $ca }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- $labels | nindent 4 }}
spec:
  ca:
    secretName: {{ $ca }}
---
{{ end -}}
{{- end -}}

{{/* nvsentinel.certificates.client: a client Certificate whose CN is the user it authenticates as; call with (dict "root" $ "provider" "<provider>" "name" "<secret>" "commonName" "<user>" "usage" "<what for>"). */}}
{{- define "nvsentinel.certificates.client" -}}
{{- $root := .root -}}
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "nvsentinel.labels" (dict "root" $root "component" (printf "%s-certificates" .provider)) | nindent 4 }}
  annotations:
    nvsentinel.nvidia.com/used-by: {{ .usage | quote }}
spec:
  secretName: {{ .name }}
  secretTemplate:
    labels:
      {{- include "nvsentinel.labels" (dict "root" $root "component" (printf "%s-certificates" .provider)) | nindent 6 }}
  commonName: {{ .commonName }}
  duration: {{ $root.Values.certManager.duration }}
  renewBefore: {{ $root.Values.certManager.renewBefore }}
  privateKey:
    {{- include "nvsentinel.certificates.privateKey" $root | nindent 4 }}
  usages:
    - digital signature
    - key encipherment
    - client auth
  issuerRef:
    {{- include "nvsentinel.certificates.issuerRef" . | nindent 4 }}
{{- end -}}

{{/* nvsentinel.certificates.server: the in-cluster store's server Certificate, <release>-<provider>-server-tls; call with (dict "root" $ "provider" "<provider>" "replicas" <int>). */}}
{{- define "nvsentinel.certificates.server" -}}
{{- $root := .root -}}
{{- $store := include "nvsentinel.storeName" . -}}
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ printf "%s-server-tls" $store }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "nvsentinel.labels" (dict "root" $root "component" (printf "%s-certificates" .provider)) | nindent 4 }}
spec:
  secretName: {{ printf "%s-server-tls" $store }}
  secretTemplate:
    labels:
      {{- include "nvsentinel.labels" (dict "root" $root "component" (printf "%s-certificates" .provider)) | nindent 6 }}
  commonName: {{ $store }}
  dnsNames:
    {{- include "nvsentinel.datastore.serverDnsNames" . | fromJsonArray | toYaml | nindent 4 }}
  ipAddresses:
    - 127.0.0.1
    - ::1
    {{- with $root.Values.global.datastore.connection.host }}
    {{- if and (include "nvsentinel.datastore.isIP" .) (not (has . (list "127.0.0.1" "::1"))) }}
    - {{ . }}
    {{- end }}
    {{- end }}
  duration: {{ $root.Values.certManager.duration }}
  renewBefore: {{ $root.Values.certManager.renewBefore }}
  privateKey:
    {{- include "nvsentinel.certificates.privateKey" $root | nindent 4 }}
  usages:
    - digital signature
    - key encipherment
    - server auth
    {{- if eq .provider "mongodb" }}
    - client auth
    {{- end }}
  issuerRef:
    {{- include "nvsentinel.certificates.issuerRef" . | nindent 4 }}
{{- end -}}
