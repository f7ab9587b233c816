{{/* Chart name, truncated for DNS labels. */}}
{{- define "bidder.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped full name. */}}
{{- define "bidder.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "bidder.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bidder.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bidder.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "bidder.labels" -}}
helm.sh/chart: {{ include "bidder.chart" . }}
{{ include "bidder.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bidder
{{- end -}}

{{- define "bidder.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "bidder.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag<suffix>, or repository@digest when a digest is pinned. */}}
{{- define "bidder.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) .Values.image.tagSuffix -}}
{{- end -}}
{{- end -}}

{{/* The Kafka consumer group of the workers: Faust uses the app id. */}}
{{- define "bidder.appId" -}}
{{- default "bidder" .Values.config.appId -}}
{{- end -}}

{{/*
The worker's settings as a map BIDDER_<NAME> -> string, rendered as YAML. Every non-null key of
`config` becomes one variable: each capital letter of the camelCase key starts a new word
(config.maxEventAgeS -> BIDDER_MAX_EVENT_AGE_S). Non-strings are JSON-encoded so that numbers never
come out in float notation (1000000, not 1e+06). kafka.tls adds the paths of the mounted files.
*/}}
{{- define "bidder.configData" -}}
{{- $data := dict -}}
{{- range $key, $value := .Values.config -}}
{{- if not (kindIs "invalid" $value) -}}
{{- $env := printf "BIDDER_%s" (regexReplaceAll "([A-Z])" $key "_${1}" | upper) -}}
{{- $_ := set $data $env (ternary $value (toJson $value) (kindIs "string" $value)) -}}
{{- end -}}
{{- end -}}
{{- with .Values.kafka.tls -}}
{{- if .existingSecret -}}
{{- if .caKey -}}{{- $_ := set $data "BIDDER_SSL_CAFILE" (printf "%s/%s" .mountPath .caKey) -}}{{- end -}}
{{- if .certKey -}}{{- $_ := set $data "BIDDER_SSL_CERTFILE" (printf "%s/%s" .mountPath .certKey) -}}{{- end -}}
{{- if .keyKey -}}{{- $_ := set $data "BIDDER_SSL_KEYFILE" (printf "%s/%s" .mountPath .keyKey) -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $data -}}
{{- end -}}

{{/* The worker's click token keys, from a Secret (the topics Job has no use for them). */}}
{{- define "bidder.clickTokenEnv" -}}
{{- with .Values.clickToken -}}
{{- if .existingSecret }}
- name: BIDDER_CLICK_TOKEN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .key }}
{{- if .previousKey }}
- name: BIDDER_CLICK_TOKEN_PREVIOUS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .previousKey }}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Env vars from Secrets (SASL password, optionally username), shared by worker and topics Job. */}}
{{- define "bidder.secretEnv" -}}
{{- with .Values.kafka.sasl -}}
{{- if .existingSecret }}
- name: BIDDER_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .passwordKey }}
{{- if .usernameKey }}
- name: BIDDER_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .usernameKey }}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Volumes shared by worker and topics Job: /tmp and the Kafka TLS files. */}}
{{- define "bidder.commonVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end -}}
{{- end -}}

{{- define "bidder.commonVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: {{ .Values.kafka.tls.mountPath }}
  readOnly: true
{{- end -}}
{{- end -}}

{{/*
Checks that a JSON schema cannot express; every template that renders a workload includes this.
*/}}
{{- define "bidder.validate" -}}
{{- $c := .Values.config -}}
{{- $partitions := int $c.topicPartitions -}}
{{- if .Values.autoscaling.enabled -}}
{{- if gt (int .Values.autoscaling.maxReplicas) $partitions -}}
{{- fail (printf "autoscaling.maxReplicas=%d exceeds config.topicPartitions=%d: a Kafka partition is consumed by one worker, extra replicas would sit idle" (int .Values.autoscaling.maxReplicas) $partitions) -}}
{{- end -}}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) -}}
{{- fail "autoscaling.minReplicas exceeds autoscaling.maxReplicas" -}}
{{- end -}}
{{- if not (or .Values.autoscaling.cpu.enabled .Values.autoscaling.consumerLag.enabled) -}}
{{- fail "autoscaling.enabled needs autoscaling.cpu.enabled or autoscaling.consumerLag.enabled" -}}
{{- end -}}
{{- else if gt (int .Values.replicaCount) $partitions -}}
{{- fail (printf "replicaCount=%d exceeds config.topicPartitions=%d: a Kafka partition is consumed by one worker, extra replicas would sit idle" (int .Values.replicaCount) $partitions) -}}
{{- end -}}
{{- $protocol := default "PLAINTEXT" $c.securityProtocol -}}
{{- $sasl := has $protocol (list "SASL_PLAINTEXT" "SASL_SSL") -}}
{{- $tls := has $protocol (list "SSL" "SASL_SSL") -}}
{{- if $sasl -}}
{{- if not .Values.kafka.sasl.existingSecret -}}
{{- fail (printf "config.securityProtocol=%s needs kafka.sasl.existingSecret (the Secret holding the SASL password)" $protocol) -}}
{{- end -}}
{{- if not $c.saslMechanism -}}
{{- fail (printf "config.securityProtocol=%s needs config.saslMechanism" $protocol) -}}
{{- end -}}
{{- if and $c.saslUsername .Values.kafka.sasl.usernameKey -}}
{{- fail "set either config.saslUsername or kafka.sasl.usernameKey, not both" -}}
{{- end -}}
{{- if not (or $c.saslUsername .Values.kafka.sasl.usernameKey) -}}
{{- fail "SASL needs a username: config.saslUsername or kafka.sasl.usernameKey" -}}
{{- end -}}
{{- else if or .Values.kafka.sasl.existingSecret $c.saslMechanism $c.saslUsername -}}
{{- fail (printf "SASL credentials are set but config.securityProtocol=%s has no SASL" $protocol) -}}
{{- end -}}
{{- if .Values.kafka.tls.existingSecret -}}
{{- if not $tls -}}
{{- fail (printf "kafka.tls.existingSecret is set but config.securityProtocol=%s has no TLS" $protocol) -}}
{{- end -}}
{{- if or $c.sslCafile $c.sslCertfile $c.sslKeyfile -}}
{{- fail "kafka.tls.existingSecret sets the TLS file paths: leave config.sslCafile/sslCertfile/sslKeyfile null" -}}
{{- end -}}
{{- if and .Values.kafka.tls.keyKey (not .Values.kafka.tls.certKey) -}}
{{- fail "kafka.tls.keyKey needs kafka.tls.certKey" -}}
{{- end -}}
{{- else if and (not $tls) (or $c.sslCafile $c.sslCertfile $c.sslKeyfile) -}}
{{- fail (printf "config.ssl* files are set but config.securityProtocol=%s has no TLS" $protocol) -}}
{{- end -}}
{{- if eq .Values.models.source "volume" -}}
{{- if not .Values.models.volume -}}
{{- fail "models.source=volume needs models.volume (a pod volume source, e.g. persistentVolumeClaim)" -}}
{{- end -}}
{{- else if eq .Values.models.source "initContainer" -}}
{{- if not .Values.models.initContainer.image -}}
{{- fail "models.source=initContainer needs models.initContainer.image" -}}
{{- end -}}
{{- end -}}
{{- if hasPrefix (printf "%s/" $c.dataDir) (printf "%s/" $c.modelDir) -}}
{{- fail "config.modelDir must not lie inside config.dataDir" -}}
{{- end -}}
{{- end -}}
