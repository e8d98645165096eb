{{- define "janus-operator.name" -}}{{ .Release.Name }}{{- end -}}
{{- define "janus-operator.labels" -}}
app.kubernetes.io/name: janus-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
{{- define "janus-operator.selector" -}}
app.kubernetes.io/name: janus-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
