{{/* Names and labels shared by every template. */}}

{{- define "finetune-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "finetune-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "finetune-operator.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "finetune-operator.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "finetune-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "finetune-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "finetune-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "finetune-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: finetune-operator
{{- end }}

{{- define "finetune-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "finetune-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "finetune-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs in every namespace it reconciles, derived from operator/finetune_operator/core/kube.py
(the only module that calls the API) and the kopf watches in handlers.py. No wildcards; each rule says which
call needs it. Used by the ClusterRole (all namespaces) or by one Role per watched namespace.
*/}}
{{- define "finetune-operator.namespacedRules" -}}
# kopf lists and watches FineTuneJobs (on.event handlers only: no finalizer, no annotation, no spec write).
- apiGroups: [finetune.dev]
  resources: [finetunejobs]
  verbs: [list, watch]
# patch: the operator's only write to a FineTuneJob is its status (Kube.patch_status).
# get: not called by the operator itself, but the per-run trainer Role it creates grants get+patch on
# finetunejobs/status (one resourceName). RBAC's escalation check lets a subject create a Role, or a
# RoleBinding to it, only when it already holds every permission in it (or has `escalate`/`bind`).
# Holding these two narrow verbs is far safer than `escalate`/`bind`, which could not be limited to the
# per-run Role names (they are derived from each FineTuneJob's name) and would let the operator mint any Role.
- apiGroups: [finetune.dev]
  resources: [finetunejobs/status]
  verbs: [get, patch]
# Children carry ownerReferences with blockOwnerDeletion: true; where the OwnerReferencesPermissionEnforcement
# admission plugin is on (OpenShift and other hardened clusters), that requires update on the owner's
# finalizers subresource. It does not allow writing the FineTuneJob's spec or status.
- apiGroups: [finetune.dev]
  resources: [finetunejobs/finalizers]
  verbs: [update]
# FineTuneSweeps (operator/finetune_operator/finetunesweep/controller.py): watched; the operator writes only their status, and
# makes their trials: FineTuneJobs it creates (create; get after a create that raced a restarted operator) and
# patches (suspend: early stopping; promote the winner: serving, gate, its owner reference dropped). It never
# writes a FineTuneJob a user made. finalizers: the trials' blockOwnerDeletion, as above.
- apiGroups: [finetune.dev]
  resources: [finetunesweeps]
  verbs: [list, watch]
- apiGroups: [finetune.dev]
  resources: [finetunesweeps/status]
  verbs: [patch]
- apiGroups: [finetune.dev]
  resources: [finetunesweeps/finalizers]
  verbs: [update]
- apiGroups: [finetune.dev]
  resources: [finetunejobs]
  verbs: [get, create, patch]
# ModelServers (shared serving, operator/finetune_operator/modelserver/controller.py): watched like FineTuneJobs; the
# operator writes only their status. finalizers: as for FineTuneJobs, for blockOwnerDeletion on their objects.
- apiGroups: [finetune.dev]
  resources: [modelservers]
  verbs: [list, watch]
- apiGroups: [finetune.dev]
  resources: [modelservers/status]
  verbs: [patch]
- apiGroups: [finetune.dev]
  resources: [modelservers/finalizers]
  verbs: [update]
# A ModelServer's pods, ConfigMaps (the desired adapter list, the report its sidecars patch) and Deployment are
# watched (label-selected: finetune.dev/server-uid) and listed once at startup, so a pass reads them from memory.
# get: what the sidecar's Role grants (on its two ConfigMaps only), and RBAC lets the operator create a Role only
# with permissions it holds itself.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch]
# Training Jobs: startup list + kopf watch (label-selected), get after a create that raced, create, delete of
# retired runs, patch of spec.suspend (only for Jobs without a Kueue queue; Kueue owns suspend otherwise).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# Training pods are only observed (exit codes, termination messages, DisruptionTarget); the Job controller
# creates them, so the operator has no create on pods.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Serving Deployments: startup list + watch, server-side apply (patch; create when it does not exist yet),
# delete when serving is turned off.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch, delete]
# Trainer config / serving config (ConfigMaps), workers' headless and serving Services, the serving
# PodDisruptionBudget: created or server-side applied, deleted when a run is retired or serving is off.
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [create, patch, delete]
# The per-run trainer identity (builders/rbac.py): created once, removed by garbage collection with its owner.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create]
# The credentials secret named in spec.storage, in the FineTuneJob's own namespace: only whether it exists
# (a metadata-only GET). No list or watch: the operator cannot enumerate secrets, and it never copies one
# (the training pods reference it by name through secretKeyRef).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Events on FineTuneJobs at phase changes (Kube.post_event).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/*
validation.gpuMemory as the operator's FTO_GPU_MEMORY: NAME=QUANTITY,... (sorted by name, as range walks a map).
*/}}
{{- define "finetune-operator.gpuMemory" -}}
{{- $rows := list -}}
{{- range $name, $memory := .Values.validation.gpuMemory -}}
{{- $rows = append $rows (printf "%s=%s" $name $memory) -}}
{{- end -}}
{{- join "," $rows -}}
{{- end -}}
