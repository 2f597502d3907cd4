{{- define "nts.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nts.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "nts.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "nts.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels; call with (dict "ctx" $ "component" "ke-server"). */}}
{{- define "nts.selector" -}}
app.kubernetes.io/name: {{ include "nts.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "nts.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "nts.ke" -}}{{ include "nts.fullname" . }}-ke{{- end -}}
{{- define "nts.keSync" -}}{{ include "nts.fullname" . }}-ke-sync{{- end -}}

{{- define "nts.rootSecretName" -}}
{{- default (printf "%s-cookie-root" (include "nts.fullname" .)) .Values.keServer.cookieKeys.existingSecret -}}
{{- end -}}

{{- define "nts.tlsSecretName" -}}
{{- default (printf "%s-ke-tls" (include "nts.fullname" .)) .Values.keServer.tls.secret.name -}}
{{- end -}}

{{- define "nts.keySyncServerSecret" -}}
{{- $default := printf "%s-keysync-server" (include "nts.fullname" .) -}}
{{- if eq .Values.keySyncPki.source "existingSecrets" -}}
{{- default $default .Values.keySyncPki.existingSecrets.server -}}
{{- else -}}
{{- $default -}}
{{- end -}}
{{- end -}}

{{- define "nts.keySyncClientSecret" -}}
{{- $default := printf "%s-keysync-client" (include "nts.fullname" .) -}}
{{- if eq .Values.keySyncPki.source "existingSecrets" -}}
{{- default $default .Values.keySyncPki.existingSecrets.client -}}
{{- else -}}
{{- $default -}}
{{- end -}}
{{- end -}}

{{/* The name the time servers' shared key-sync client certificate holds (SAN and CN);
every time server registers as NAME:NODE (ke-server accepts a certificate name
followed by ":" and a suffix), so one certificate serves every node. */}}
{{- define "nts.keySyncClientName" -}}
{{- default (printf "%s-time-server" (include "nts.fullname" .)) .Values.keySyncPki.clientName -}}
{{- end -}}

{{/* DNS names of every KE replica's key-sync endpoint (StatefulSet pods behind the headless Service). */}}
{{- define "nts.keySyncHosts" -}}
{{- $ke := include "nts.ke" . -}}
{{- $svc := include "nts.keSync" . -}}
{{- $hosts := list -}}
{{- range $i := until (int .Values.keServer.replicas) -}}
{{- $hosts = append $hosts (printf "%s-%d.%s.%s.svc" $ke $i $svc $.Release.Namespace) -}}
{{- end -}}
{{- join "," $hosts -}}
{{- end -}}

{{/* Container security context shared by the non-root daemons. */}}
{{- define "nts.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* A TOML float: whole numbers get ".0" (TOML integers are not floats). */}}
{{- define "nts.float" -}}
{{- $v := float64 . -}}
{{- if eq $v (floor $v) -}}{{ printf "%.1f" $v }}{{- else -}}{{ $v }}{{- end -}}
{{- end -}}

{{/* The chart's PriorityClass (priorityClasses.create). */}}
{{- define "nts.priorityClass" -}}
{{- default (include "nts.fullname" .) .Values.priorityClasses.name -}}
{{- end -}}

{{/* A role's priorityClassName: its own value, else the chart's class when created, else none.
Call with (dict "ctx" $ "name" .Values.ROLE.priorityClassName). */}}
{{- define "nts.priorityClassName" -}}
{{- if .name -}}
{{- .name -}}
{{- else if .ctx.Values.priorityClasses.create -}}
{{- include "nts.priorityClass" .ctx -}}
{{- end -}}
{{- end -}}

{{/* Listen addresses of the time servers (server.listen). */}}
{{- define "nts.timeServerListen" -}}
{{- prepend .Values.timeServer.extraListen (printf "0.0.0.0:%d" (int .Values.timeServer.port)) | toJson -}}
{{- end -}}

{{/* The time servers' resources: limits.memory, when not given, is
memoryLimit.baseMi + perWorkerAndAddressMi x workers x listen addresses (MiB, rounded up). */}}
{{- define "nts.timeServerResources" -}}
{{- $t := .Values.timeServer -}}
{{- $r := deepCopy $t.resources -}}
{{- $limits := default dict $r.limits -}}
{{- if not $limits.memory -}}
{{- if eq (int $t.workers) 0 -}}
{{- fail "timeServer.workers=0 (one per core): set timeServer.resources.limits.memory for the largest node (README, \"Memory\")" -}}
{{- end -}}
{{- $addrs := add 1 (len $t.extraListen) -}}
{{- $mi := addf $t.memoryLimit.baseMi (mulf $t.memoryLimit.perWorkerAndAddressMi (int $t.workers) $addrs) | ceil | int -}}
{{- $_ := set $limits "memory" (printf "%dMi" $mi) -}}
{{- end -}}
{{- $_ := set $r "limits" $limits -}}
{{- toYaml $r -}}
{{- end -}}
