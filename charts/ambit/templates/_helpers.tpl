{{/* Common labels. */}}
{{- define "ambit.labels" -}}
app.kubernetes.io/name: ambit
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ambit
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "ambit.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "ambit.waypointImage" -}}
{{ .Values.waypoint.image.repository }}:{{ .Values.waypoint.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "ambit.caAddress" -}}
{{ .Values.caAddress | default .Values.xdsAddress }}
{{- end }}

{{/* The DaemonSet's name and its pods' app label: ztunnel's (what istioctl looks for) unless ztunnelNames is off. */}}
{{- define "ambit.agentName" -}}
{{ ternary "ztunnel" "ambit" .Values.ztunnelNames }}
{{- end }}
