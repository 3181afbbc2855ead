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
The namespaces the operator reconciles, comma-separated: watchNamespaces, else the release namespace; empty
only with clusterWide (every namespace), which may not be combined with a list.
*/}}
{{- define "finetune-operator.namespaces" -}}
{{- if .Values.clusterWide }}
{{- if .Values.watchNamespaces }}
{{- fail "clusterWide=true reconciles every namespace: leave watchNamespaces empty (or set clusterWide=false)" }}
{{- end }}
{{- else }}
{{- join "," (.Values.watchNamespaces | default (list .Release.Namespace)) }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs in every namespace it reconciles, derived from operator/finetune_operator/core/kube.py
(the only module that calls the API) and the kopf watches in handlers.py. No wildcards, no escalate, bind or
impersonate; each rule says which call needs it. Used by one Role per watched namespace, or (clusterWide) by the
ClusterRole, which gets no Secret rule: call with (dict "secrets" true|false).
tests/helm/test_chart.py pins the exact list; docs/security.md shows `kubectl auth can-i --list` for it.
*/}}
{{- define "finetune-operator.namespacedRules" -}}
# kopf lists and watches FineTuneJobs (on.event handlers only: no finalizer, no annotation, no spec write).
- apiGroups: [finetune.dev]
  resources: [finetunejobs]
  verbs: [list, watch]
# patch: the operator's only write to a FineTuneJob is its status (Kube.patch_status). Nobody else's: the
# trainer reports progress in a ConfigMap the operator reads and checks (builders/rbac.py).
- apiGroups: [finetune.dev]
  resources: [finetunejobs/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion: true; where the OwnerReferencesPermissionEnforcement
# admission plugin is on (OpenShift and other hardened clusters), that requires update on the owner's
# finalizers subresource. It does not allow writing the FineTuneJob's spec or status.
- apiGroups: [finetune.dev]
  resources: [finetunejobs/finalizers]
  verbs: [update]
# FineTuneSweeps (finetunesweep/controller.py): watched; the operator writes only their status, and makes their
# trials: FineTuneJobs it creates (create; get after a create that raced a restarted operator) and patches (suspend:
# early stopping; promote the winner: serving, gate, its owner reference dropped). It never writes a FineTuneJob a
# user made (RBAC cannot tell trials apart; the code does). This rule: kopf's watch of FineTuneSweeps.
- apiGroups: [finetune.dev]
  resources: [finetunesweeps]
  verbs: [list, watch]
# A sweep's status, the operator's only write to a FineTuneSweep.
- apiGroups: [finetune.dev]
  resources: [finetunesweeps/status]
  verbs: [patch]
# The trials' blockOwnerDeletion on their sweep (as for finetunejobs/finalizers above).
- apiGroups: [finetune.dev]
  resources: [finetunesweeps/finalizers]
  verbs: [update]
# The trials themselves: created, read back after a raced create, suspended or promoted.
- apiGroups: [finetune.dev]
  resources: [finetunejobs]
  verbs: [get, create, patch]
# ModelServers (shared serving, modelserver/controller.py): watched like FineTuneJobs; the operator writes only their
# status. This rule: kopf's watch of ModelServers.
- apiGroups: [finetune.dev]
  resources: [modelservers]
  verbs: [list, watch]
# A ModelServer's status (admitted adapters, replicas), the operator's only write to one.
- apiGroups: [finetune.dev]
  resources: [modelservers/status]
  verbs: [patch]
# blockOwnerDeletion of a ModelServer's objects (as for finetunejobs/finalizers above).
- apiGroups: [finetune.dev]
  resources: [modelservers/finalizers]
  verbs: [update]
# A ModelServer's pods, ReplicaSets, ConfigMaps (the desired adapter list, the report its sidecars patch) and
# Deployment are watched, label-selected (finetune.dev/server-uid, component model-server), and listed once at
# startup, so a ModelServer pass reads them from memory instead of reading them on every pass (list, watch: RBAC
# cannot limit them to a label, so they reach every ConfigMap of a watched namespace, as get already does by name).
# get+patch on ConfigMaps is also what the sidecar's Role grants (builders/modelserver.py sync_rbac, on those two
# names only), which the operator may create only holding it; get also reads who controls a ConfigMap before an
# apply or a delete (ownership). A FineTuneJob pass reads the trainer's progress ConfigMap by name while the run's
# pods train (the trainer's config is never read back).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch]
# Training Jobs: startup list + kopf watch (label-selected), get after a create that raced, create, delete of
# retired runs, patch of spec.suspend (only for Jobs without a Kueue queue; Kueue owns suspend otherwise).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# Pods: a run's data check (component validator) is a bare pod the operator creates itself, controlled by its
# FineTuneJob (a batch Job per check made the Job controller's client rate limit the bottleneck at 500 runs;
# Kueue-queued runs keep the Job). create: that pod; delete: the check pod of a retired or suspended run, after a
# placement change, before a retry; get (metadata only): who controls the pod after a create answered 409.
# list, watch: every pod is observed (exit codes, termination messages, DisruptionTarget; a ModelServer's
# replicas, label-selected). Training pods are still made by the Job controller. Creating a pod is no more power
# than creating a Job, which the operator already has (batch rule above); the chart's admission policy
# (templates/admission-policy.yaml) admits from this ServiceAccount only a validator pod its FineTuneJob controls,
# without a token, non-root, unprivileged, with no host namespaces or hostPath. Still no exec, logs, attach,
# patch or update on pods.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
# Serving Deployments (a FineTuneJob's own, a ModelServer's): startup list + watch, server-side apply (patch;
# create when it does not exist yet), delete when serving is turned off; get (metadata only) before an apply or a
# delete: who controls it (ownership, as for Services below; the passes read the Deployments themselves from memory).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
# Trainer config / serving config / a ModelServer's desired list / the trainer's progress (ConfigMaps), workers'
# headless and serving Services, the serving PodDisruptionBudget: created or server-side applied, deleted when a run
# is retired or serving is off; a gone replica's key is merge-patched out of a ModelServer's report ConfigMap.
# patch on ConfigMaps is also what the per-FineTuneJob trainer Role grants (on its progress ConfigMap only): RBAC
# lets a subject create a Role only when it already holds every permission in it.
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [create, patch, delete]
# get (metadata only): before an apply or a delete, and after a create that found the name taken, the operator
# reads who controls the object, and never applies over, adopts or deletes one it does not own (ConfigMaps: the
# get rule above).
- apiGroups: [""]
  resources: [services]
  verbs: [get]
# The serving PodDisruptionBudget (two or more replicas): server-side applied, deleted with serving or at one
# replica; get as for Services.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch, delete]
# A ModelServer's replicas are the pods of the ReplicaSets its own Deployment controls: its ReplicaSets are listed
# once at startup and watched (label-selected, like its pods), so a pass tells its replicas from pods that merely
# carry its labels from memory.
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [list, watch]
# The per-run trainer identity (builders/rbac.py) and a ModelServer sidecar's (builders/modelserver.py sync_rbac):
# a ServiceAccount, a Role naming its objects (resourceNames) and a RoleBinding, created once and removed by garbage
# collection with their owner (no patch or delete); get (metadata only) after a create that found the name taken:
# used only when this owner controls it. RBAC cannot limit `create` to names: the escalation check keeps every Role
# within the rules above, and the chart's admission policy (rbac.admissionPolicy, templates/admission-policy.yaml)
# admits from this ServiceAccount only Roles whose every rule names its objects with get/patch, and RoleBindings
# binding a Role of their own name to the one ServiceAccount of that name.
# This rule: the ServiceAccount (automountServiceAccountToken false; only the pods that need it mount a token).
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create]
# ... and its Role and RoleBinding (above: why create cannot be named, and what bounds it instead).
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create]
# A trainer Role an older operator made with other rules (finetunejobs/status patch, before issue #24) is put back
# to the current ones (builders/rbac.py trainer_rules), once per FineTuneJob: a PUT bound to the Role's uid and
# resourceVersion. The admission policy admits an update from this ServiceAccount only of a Role a finetune.dev
# object already controls, and only to rules of the same bounded shape; RBAC's escalation check applies too.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles]
  verbs: [update]
# The NetworkPolicy in front of every serving Deployment (a FineTuneJob's own, a ModelServer's): ingress to the
# serving port only from the server's namespace (and a ModelServer's allowedNamespaces). Server-side applied with
# the serving bundle (create, patch), deleted with serving; get (metadata only): who controls it, as for Services.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, patch, delete]
# The API key Secret the operator generates for an endpoint whose manifest names none (builders/apikey.py;
# `<job>-api-key`, `<server>-server-api-key`): created once, with a key the operator draws, controlled by its
# FineTuneJob or ModelServer (garbage-collected with it). create only: no update, patch or delete (which could
# overwrite a tenant's storage credentials), and no read: the key's hash is kept in the owner's status and on the
# Secret's annotations, read as metadata where the rule below exists. The chart's admission policy admits from this
# ServiceAccount only such Secrets (a finetune.dev controller, the name suffix, the one key).
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
{{- if .secrets }}
# The credentials Secret named in spec.storage, in the FineTuneJob's own namespace: only whether it exists, read
# as PartialObjectMetadata (Kube.exists_metadata: the data never reaches the operator), and only until the run's
# Job exists. RBAC has no metadata-only verb, so this `get` would allow reading the data of the Secrets of this
# namespace: which is why it exists only in per-namespace Roles, never in the clusterWide ClusterRole. No list or
# watch: the operator cannot enumerate Secrets, and it never copies one (pods use secretKeyRef). The same metadata
# read tells whose a generated key's Secret is when its create finds the name taken, and recovers the key's hash
# from its annotation when the owner's status lost it (clusterWide: no such read; that case waits, retried).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}
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
