{{- define "janus-operator.name" -}}{{ .Release.Name }}{{- end -}}
{{- define "janus-operator.labels" -}}
app.kubernetes.io/name: janus-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "janus-operator.selector" -}}
app.kubernetes.io/name: janus-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "janus-operator.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- define "janus-operator.reportUrl" -}}
{{- if .Values.reportUrl -}}
{{ .Values.reportUrl }}
{{- else -}}
http://{{ include "janus-operator.name" . }}.{{ .Release.Namespace }}.svc:{{ .Values.metrics.port }}/v1/report
{{- end -}}
{{- end -}}
