{{/*
The chart name (app.kubernetes.io/name).
*/}}
{{- define "magic-ip.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: <release>-magic-ip, or <release> when it contains the chart name.
A release whose name does not start with a letter (one named after its address, e.g.
169-254-210-210) gives <chart>-<release> instead: Service names must start with a letter. Truncated
to 55 characters so that "<fullname>-webhook" is still a valid Service name (63).
*/}}
{{- define "magic-ip.fullname" -}}
{{- $chart := include "magic-ip.name" . }}
{{- $name := "" }}
{{- if .Values.fullnameOverride }}
{{- $name = .Values.fullnameOverride }}
{{- if not (regexMatch "^[a-z]" $name) }}
{{- $name = printf "%s-%s" $chart $name }}
{{- end }}
{{- else if contains $chart .Release.Name }}
{{- $name = .Release.Name }}
{{- else if regexMatch "^[a-z]" .Release.Name }}
{{- $name = printf "%s-%s" .Release.Name $chart }}
{{- else }}
{{- $name = printf "%s-%s" $chart .Release.Name }}
{{- end }}
{{- $name | trunc 55 | trimSuffix "-" }}
{{- end }}

{{/*
Chart name and version (helm.sh/chart).
*/}}
{{- define "magic-ip.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable across upgrades (never the version). Call with (dict "ctx" $ "component" "agent");
an empty component gives the chart-wide pair only.
*/}}
{{- define "magic-ip.selectorLabels" -}}
app.kubernetes.io/name: {{ include "magic-ip.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name | quote }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
Common labels: the selector labels plus version, chart and manager.
*/}}
{{- define "magic-ip.labels" -}}
{{ include "magic-ip.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ include "magic-ip.chart" .ctx }}
{{- end }}

{{/* Object names. */}}
{{- define "magic-ip.agentName" -}}
{{- printf "%s-agent" (include "magic-ip.fullname" .) }}
{{- end }}

{{- define "magic-ip.webhookName" -}}
{{- printf "%s-webhook" (include "magic-ip.fullname" .) }}
{{- end }}

{{- define "magic-ip.webhookTLSSecretName" -}}
{{- printf "%s-webhook-tls" (include "magic-ip.fullname" .) }}
{{- end }}

{{- define "magic-ip.agentServiceAccountName" -}}
{{- default (include "magic-ip.agentName" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "magic-ip.webhookServiceAccountName" -}}
{{- default (include "magic-ip.webhookName" .) .Values.webhook.serviceAccount.name }}
{{- end }}

{{/*
Image reference: call with (dict "image" .Values.image "ctx" $).
*/}}
{{- define "magic-ip.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion (toString (default "" .image.tag))) }}
{{- end }}

{{/*
Namespaces the webhook never mutates: its own (the release's) and kube-system.
*/}}
{{- define "magic-ip.webhookExcludedNamespaces" -}}
{{- list .Release.Namespace "kube-system" | uniq | toJson }}
{{- end }}

{{/*
The MagicIPs to render, as a JSON list of {name, spec}: the one from config.* (seed-chart style)
followed by .Values.magicIPs. Fails on missing or invalid keys with a message naming them.
*/}}
{{- define "magic-ip.magicIPs" -}}
{{- $out := list }}
{{- $producerNS := default .Release.Namespace .Values.config.namespace }}
{{- with .Values.config }}
{{- if .ipAddress }}
{{- $addr := toString .ipAddress | trim }}
{{- $name := default ($addr | lower | replace "." "-" | replace ":" "-" | trimAll "-") (toString (default "" .name)) }}
{{- if not .port }}
{{- fail "config.port is required with config.ipAddress: the port clients connect to, e.g. --set config.port=9200" }}
{{- end }}
{{- $port := int64 (toString .port) }}
{{- if or (lt $port 1) (gt $port 65535) }}
{{- fail (printf "config.port %v: want 1-65535" .port) }}
{{- end }}
{{- $proto := upper (toString (default "tcp" .protocol)) }}
{{- if not (has $proto (list "TCP" "UDP")) }}
{{- fail (printf "config.protocol %q: want tcp or udp" (toString .protocol)) }}
{{- end }}
{{- $p := dict "name" (printf "port-%d" $port) "port" $port "protocol" $proto }}
{{- if .targetPort }}
{{- $tp := int64 (toString .targetPort) }}
{{- if or (lt $tp 1) (gt $tp 65535) }}
{{- fail (printf "config.targetPort %v: want 1-65535" .targetPort) }}
{{- end }}
{{- $_ := set $p "targetPort" $tp }}
{{- end }}
{{- $labels := dict }}
{{- if kindIs "map" .selector }}
{{- range $k, $v := .selector }}
{{- $_ := set $labels $k (toString $v) }}
{{- end }}
{{- else }}
{{- range $kv := splitList "," (toString (default "" .selector)) }}
{{- if trim $kv }}
{{- $parts := regexSplit "=" (trim $kv) 2 }}
{{- if ne (len $parts) 2 }}
{{- fail (printf "config.selector: %q is not key=value (want e.g. app=apm-server,tier=node)" (trim $kv)) }}
{{- end }}
{{- $_ := set $labels (trim (index $parts 0)) (trim (index $parts 1)) }}
{{- end }}
{{- end }}
{{- end }}
{{- if not $labels }}
{{- fail "config.selector is required with config.ipAddress: the producer pods' labels, e.g. --set config.selector=app=apm-server" }}
{{- end }}
{{- $spec := dict "address" $addr "ports" (list $p) "producer" (dict "namespace" $producerNS "selector" (dict "matchLabels" $labels)) }}
{{- $out = append $out (dict "name" $name "spec" $spec) }}
{{- end }}
{{- end }}
{{- range $i, $m := .Values.magicIPs }}
{{- if not $m.name }}
{{- fail (printf "magicIPs[%d]: name is required" $i) }}
{{- end }}
{{- if not $m.spec }}
{{- fail (printf "magicIPs[%d] (%s): spec is required" $i $m.name) }}
{{- end }}
{{- $spec := deepCopy $m.spec }}
{{- $producer := default dict $spec.producer }}
{{- if not $producer.namespace }}
{{- $_ := set $producer "namespace" $producerNS }}
{{- end }}
{{- $_ := set $spec "producer" $producer }}
{{- $out = append $out (dict "name" $m.name "spec" $spec "labels" (default dict $m.labels) "annotations" (default dict $m.annotations)) }}
{{- end }}
{{- $seen := dict }}
{{- range $out }}
{{- if hasKey $seen .name }}
{{- fail (printf "MagicIP %q is defined twice (config.ipAddress and magicIPs, or twice in magicIPs)" .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
The webhook's TLS material when cert-manager is off, as JSON {ca.crt, tls.crt, tls.key} (base64):
the existing Secret's on upgrade (lookup), otherwise a new CA (10 years) and a serving certificate
for the Service's DNS names signed by it. Include it ONCE per render: each call generates anew.
*/}}
{{- define "magic-ip.webhookTLS" -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "magic-ip.webhookTLSSecretName" .) }}
{{- $data := dict }}
{{- if $secret }}
{{- $data = default dict $secret.data }}
{{- end }}
{{- if and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key") }}
{{- dict "ca.crt" (index $data "ca.crt") "tls.crt" (index $data "tls.crt") "tls.key" (index $data "tls.key") | toJson }}
{{- else }}
{{- $svc := include "magic-ip.webhookName" . }}
{{- $dns := list (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) }}
{{- $ca := genCA (printf "%s-ca" (include "magic-ip.fullname" .)) 3650 }}
{{- $cert := genSignedCert (first $dns) nil $dns 3650 $ca }}
{{- dict "ca.crt" ($ca.Cert | b64enc) "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc) | toJson }}
{{- end }}
{{- end }}

{{/*
An agent bind address (--metrics-bind-address, --health-probe-bind-address) as JSON
{value, port, exposed, probeHost}. Call with (dict "key" "agent.metrics.bindAddress" "value" $v
"disable" true); "disable" allows "0" (the endpoint off). value is host:port, the host empty, an
IP, localhost or $(VAR) (an env var of the container, e.g. $(NODE_IP)). exposed: reachable beyond
the node's loopback. probeHost: what the kubelet, in the node's network namespace as the agent
is, must call (empty: the pod IP, which is the node's).
*/}}
{{- define "magic-ip.bindAddress" -}}
{{- $v := "" }}
{{- if not (kindIs "invalid" .value) }}
{{- $v = toString .value | trim }}
{{- end }}
{{- if and .disable (eq $v "0") }}
{{- dict "value" "0" "port" 0 "exposed" false "probeHost" "" | toJson }}
{{- else }}
{{- if not (regexMatch "^(\\[[0-9a-fA-F:.]+\\]|[^:\\[\\]]*):[0-9]{1,5}$" $v) }}
{{- fail (printf "%s %q: want host:port, e.g. 127.0.0.1:10271, $(NODE_IP):10271 or 0.0.0.0:10271%s" .key $v (ternary " (or 0: off)" "" .disable)) }}
{{- end }}
{{- $port := regexFind "[0-9]+$" $v }}
{{- if or (lt (int $port) 1) (gt (int $port) 65535) }}
{{- fail (printf "%s %q: port %s is not 1-65535" .key $v $port) }}
{{- end }}
{{- $host := trimSuffix (printf ":%s" $port) $v }}
{{- $loopback := or (regexMatch "^127\\." $host) (has $host (list "localhost" "[::1]")) }}
{{- $probeHost := "" }}
{{- if has $host (list "" "0.0.0.0" "localhost") }}
{{- $probeHost = "127.0.0.1" }}
{{- else if $loopback }}
{{- $probeHost = trimAll "[]" $host }}
{{- else if eq $host "[::]" }}
{{- $probeHost = "::1" }}
{{- end }}
{{- dict "value" $v "port" (int $port) "exposed" (not $loopback) "probeHost" $probeHost | toJson }}
{{- end }}
{{- end }}
