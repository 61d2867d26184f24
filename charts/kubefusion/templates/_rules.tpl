{{/*
The operator's API accesses, in one place. tests/integration/packaging/test_chart_rbac.py runs the
operator's integration tests against the recording Kubernetes emulator and checks that these rules
allow every request the operator made and grant nothing it never requested (no wildcards).
*/}}

{{/* Rules the operator needs in every namespace it serves (the same rules cluster-wide in cluster mode). */}}
{{- define "kubefusion.rules" -}}
# FusionRuns: kopf lists and watches them and patches its bookkeeping annotations; the reconciler
# reads one before acting, clears the retry annotation and writes the status.
- apiGroups: ["kubefusion.dev"]
  resources: ["fusionruns"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kubefusion.dev"]
  resources: ["fusionruns/status"]
  verbs: ["patch"]
# Children name their run as owner with blockOwnerDeletion: true; the API server's
# OwnerReferencesPermissionEnforcement admission (on by default in OpenShift) allows that only to
# whoever may update the owner's finalizers. Nothing is ever written to fusionruns/finalizers.
- apiGroups: ["kubefusion.dev"]
  resources: ["fusionruns/finalizers"]
  verbs: ["update"]
# Children whose state is a stage's state: watched (kopf) and listed by run label; created, suspended
# and resumed (patch), deleted on retry, when a server is no longer needed and when the run is deleted.
# Training runs as a PyTorchJob (training operator v1) or a TrainJob (Trainer v2), whichever the
# cluster serves (the operator finds out through API discovery, which RBAC allows every user).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["kubeflow.org"]
  resources: ["pytorchjobs"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["trainer.kubeflow.org"]
  resources: ["trainjobs"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# The run's config (ConfigMap) and the vLLM Services: created, listed and deleted with the run.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["list", "create", "delete"]
# Sandbox pods' deny-all NetworkPolicy (code answers): created with the task, deleted on retry and with
# the run.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "create", "delete"]
# Stage pods: listed to read their progress over HTTP (never exec, logs or secrets).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# Events about FusionRuns (kopf posts them to the core API); FailedCreate Events of the run's Jobs are
# listed to report pods the API server refused (quota, Pod Security).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
{{- end }}


{{/* Cluster mode only: kopf lists and watches CRDs to notice resources (e.g. PyTorchJob) installed after it
started. In namespaced mode the chart grants nothing cluster-wide; kopf then logs a warning and only
rescans on restart. */}}
{{- define "kubefusion.clusterRules" -}}
# kopf: notice CRDs (e.g. PyTorchJob) installed after the operator started. Read-only.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}
