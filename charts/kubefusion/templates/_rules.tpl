{{/*
The operator's API accesses, in one place. tests/integration/packaging/test_chart_rbac.py runs the
operator against the Kubernetes emulator and checks that these rules grant every request it made and
nothing more (no wildcards, no verb it never uses).
*/}}

{{/* Rules the operator needs in every namespace it watches. */}}
{{- define "kubefusion.namespacedRules" -}}
# FusionRuns: watched, annotated by kopf (progress, finalizers) and their status written.
- apiGroups: ["kubefusion.dev"]
  resources: ["fusionruns"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kubefusion.dev"]
  resources: ["fusionruns/status"]
  verbs: ["get", "patch"]
# A run's children: vLLM servers, stage Jobs, training PyTorchJobs and the run's config.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["kubeflow.org"]
  resources: ["pytorchjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Events on FusionRuns (kopf posts them to the core API).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* Rules that only make sense cluster-wide (kopf's discovery of namespaces and CRDs). */}}
{{- define "kubefusion.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
