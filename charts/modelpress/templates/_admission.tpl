{{/*
CEL for the ValidatingAdmissionPolicy (admission.yaml), generated from the same values the
operator's settings come from (tenancy.prefixes, tenancy.allowedImages, image.step), so the
policy and the operator's intake agree. Only functions Kubernetes' CEL and cel-python share:
has(), size(), startsWith(), matches() (RE2 in both), exists(), exists_one(), all(), in.
String literals are JSON strings, which CEL reads alike.
*/}}

{{/* The job's prefixes as a CEL list: each template with {namespace} replaced by the job's
namespace, ending with "/" so that they compare whole path segments. */}}
{{- define "modelpress.admission.prefixes" -}}
{{- $items := list -}}
{{- range .Values.tenancy.prefixes -}}
{{- $parts := list -}}
{{- range splitList "{namespace}" (printf "%s/" (trimSuffix "/" .)) -}}
{{- $parts = append $parts (toJson .) -}}
{{- end -}}
{{- $items = append $items (join " + object.metadata.namespace + " $parts) -}}
{{- end -}}
[{{ join ", " $items }}]
{{- end -}}

{{/* The images spec.image may name, as the operator allows them: tenancy.allowedImages, or
only the step image when that is empty. */}}
{{- define "modelpress.admission.images" -}}
{{- $images := .Values.tenancy.allowedImages | default (list (include "modelpress.stepImage" .)) -}}
{{- $items := list -}}
{{- range $images }}{{ $items = append $items (toJson .) }}{{ end -}}
[{{ join ", " $items }}]
{{- end -}}

{{/* Whether the location (a CEL expression, the argument) carries no credentials. */}}
{{- define "modelpress.admission.noCredentials" -}}
!{{ . }}.matches(r'^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@')
{{- end -}}

{{/* Whether the location (a CEL expression, the argument) lies under one of the job's
prefixes: no credentials, no ".." segment, none of ? # % \ (which uri parsers and file://
unquoting read differently), and a prefix that starts it (or it plus "/"). */}}
{{- define "modelpress.admission.within" -}}
({{ include "modelpress.admission.noCredentials" . }} && !{{ . }}.matches(r'(^|/)\.\.(/|$)') && !{{ . }}.matches(r'[?#%\\]') && variables.prefixes.exists(p, ({{ . }} + '/').startsWith(p)))
{{- end -}}

{{/* An input (a CEL expression, the argument): s3:// and file:// ones under the prefixes;
builtin://, hf:// and http(s):// ones need only carry no credentials, as at intake. */}}
{{- define "modelpress.admission.input" -}}
(({{ . }}.startsWith('s3://') || {{ . }}.startsWith('file://')) ? {{ include "modelpress.admission.within" . }} : {{ include "modelpress.admission.noCredentials" . }})
{{- end -}}
