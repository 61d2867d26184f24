"""The chart renders with real Helm for every value set, lints clean and every object is valid Kubernetes."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging_chart import CHART_DIR, NAMESPACE, RELEASE, REPO_ROOT, VALUE_SETS, find, lint, only, render
from packaging_training import crd_schemas

KUBE_VERSION = "1.31"

# kubernetes_validate knows only built-in kinds. The Prometheus Operator's ServiceMonitor and PodMonitor
# are checked against this minimal schema instead: the fields the chart sets, with the CRD's types,
# required fields and duration pattern (monitoring.coreos.com/v1), and no field the CRD lacks.
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string"},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
    },
}
_NAMESPACE_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
}


def _monitor_schema(kind: str, endpoints_key: str) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": ["name", "namespace"],
                "properties": {
                    "name": {"type": "string"},
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", endpoints_key],
                "properties": {
                    "selector": _LABEL_SELECTOR,
                    "namespaceSelector": _NAMESPACE_SELECTOR,
                    "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                    endpoints_key: {"type": "array", "minItems": 1, "items": _ENDPOINT},
                },
            },
        },
    }


MONITOR_SCHEMAS = {
    "ServiceMonitor": _monitor_schema("ServiceMonitor", "endpoints"),
    "PodMonitor": _monitor_schema("PodMonitor", "podMetricsEndpoints"),
}


def _validate(obj: dict[str, Any]) -> None:
    if obj["kind"] in MONITOR_SCHEMAS:
        jsonschema.validate(obj, MONITOR_SCHEMAS[obj["kind"]])
    elif (
        obj["kind"] == "ClusterTrainingRuntime"
    ):  # against the Trainer v2.3 CRD (test_chart_training_runtime)
        if crd_schemas.schemas_available():
            problems = crd_schemas.problems("trainer.kubeflow.org", "clustertrainingruntimes", obj)
            if problems:
                raise jsonschema.ValidationError("; ".join(problems))
    else:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_rendered_object_is_valid_kubernetes(value_set: str) -> None:
    objects = render(VALUE_SETS[value_set])
    assert objects, "nothing rendered"
    for obj in objects:
        try:
            _validate(obj)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{value_set}: {obj['kind']}/{obj['metadata']['name']} is invalid: {exc}")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_reports_no_errors_or_warnings(value_set: str) -> None:
    report = lint(VALUE_SETS[value_set])
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, (report["errors"], problems)


def test_the_monitor_schema_rejects_what_the_crd_would() -> None:
    objects = render(VALUE_SETS["monitoring"])
    monitor = only(objects, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "half a minute"
    with pytest.raises(jsonschema.ValidationError):
        _validate(monitor)


def test_objects_live_in_the_release_namespace_and_carry_release_labels() -> None:
    for obj in render({}):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        cluster_scoped = {
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "ClusterTrainingRuntime",
        }
        namespaced = obj["kind"] not in cluster_scoped
        assert (obj["metadata"].get("namespace") == NAMESPACE) == namespaced, obj["kind"]


def test_defaults_render_one_operator_that_never_overlaps_itself() -> None:
    deployment = only(render({}), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_default_images_are_the_chart_app_version() -> None:
    app_version = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
    container = only(render({}), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/kubefusion/kubefusion-operator:{app_version}"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBEFUSION_IMAGE"] == f"ghcr.io/kubefusion/kubefusion-trainer:{app_version}"


def test_chart_app_version_is_the_project_version() -> None:
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"] == project["version"]


def test_custom_images_replace_the_defaults() -> None:
    objects = render(VALUE_SETS["custom-images"])
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example.com/ml/kubefusion-operator:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBEFUSION_IMAGE"] == "registry.example.com/ml/kubefusion-trainer@sha256:" + "ab" * 32


def test_resources_and_scheduling_reach_the_pod() -> None:
    values = VALUE_SETS["resources"]
    pod = only(render(values), "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"] == values["resources"]
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert {"name": "EXTRA", "value": "1"} in container["env"]
    assert "--verbose" in container["args"]


def test_cluster_mode_watches_all_namespaces_with_a_cluster_role() -> None:
    objects = render({})
    args = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any(a.startswith("--namespace") for a in args)  # the operator's default: all namespaces
    binding = only(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == only(objects, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": only(objects, "ServiceAccount")["metadata"]["name"],
            "namespace": NAMESPACE,
        }
    ]
    assert not find(objects, "Role") and not find(objects, "RoleBinding")


@pytest.mark.parametrize(
    ("value_set", "namespaces"),
    [("namespaced", ["team-a", "team-b"]), ("namespaced-release-ns", [NAMESPACE])],
)
def test_namespaced_mode_grants_only_the_watched_namespaces(value_set: str, namespaces: list[str]) -> None:
    objects = render(VALUE_SETS[value_set])
    assert not find(objects, "ClusterRole") and not find(objects, "ClusterRoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in find(objects, "Role")) == namespaces
    assert sorted(b["metadata"]["namespace"] for b in find(objects, "RoleBinding")) == namespaces
    args = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == [f"--namespace={n}" for n in namespaces]


def test_metrics_service_selects_the_operator_pod_and_port() -> None:
    objects = render({})
    service = only(objects, "Service")
    pod = only(objects, "Deployment")["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    port_names = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in port_names


def test_monitoring_objects_only_when_enabled() -> None:
    quiet = render({})
    for kind in ("ServiceMonitor", "PodMonitor", "ConfigMap"):
        assert not find(quiet, kind), kind
    objects = render(VALUE_SETS["monitoring"])
    service_monitor = only(objects, "ServiceMonitor")
    service = only(objects, "Service")
    assert service_monitor["metadata"]["labels"]["release"] == "prometheus"
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert service_monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert only(objects, "PodMonitor")["spec"]["namespaceSelector"] == {"any": True}
    configmaps = {c["metadata"]["name"]: c for c in find(objects, "ConfigMap")}
    assert configmaps[f"{RELEASE}-kubefusion-dashboard"]["metadata"]["namespace"] == "monitoring"
    assert configmaps[f"{RELEASE}-kubefusion-argocd-health"]["metadata"]["namespace"] == "argocd"


def test_pod_monitor_follows_the_watched_namespaces() -> None:
    values = {
        "watch": {"mode": "namespaced", "namespaces": ["team-a"]},
        "metrics": {"podMonitor": {"enabled": True}},
    }
    assert only(render(values), "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_service_monitor_without_the_service_fails_clearly() -> None:
    import helm_python as helm

    values = {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}
    with pytest.raises(
        helm.HelmError, match=r"metrics\.serviceMonitor\.enabled needs metrics\.service\.enabled"
    ):
        render(values)


def test_existing_service_account_and_external_crd() -> None:
    objects = render(VALUE_SETS["external-crd-and-sa"])
    assert not find(objects, "ServiceAccount") and not find(objects, "CustomResourceDefinition")
    assert not find(objects, "Service")
    assert only(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "existing-sa"
    assert only(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "existing-sa"
    assert only(objects, "Deployment")["metadata"]["name"] == "fusion"


def test_missing_service_account_name_fails_clearly() -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match=r"serviceAccount\.name is required"):
        render({"serviceAccount": {"create": False}})


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    objects = render({"rbac": {"create": False}})
    assert not [o for o in objects if o["apiVersion"].startswith("rbac.authorization.k8s.io")]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_operator_command_line_parses_with_the_real_cli(
    value_set: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubefusion_operator import cli, main

    values = VALUE_SETS[value_set]
    container = only(render(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[0] == "operator" and args[0] in cli.DELEGATED  # the image's ENTRYPOINT is `kubefusion`
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    monkeypatch.setenv("KUBEFUSION_IMAGE", env["KUBEFUSION_IMAGE"])
    parsed = main.build_parser().parse_args(args[1:])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert parsed.metrics_port == ports["metrics"] and parsed.health_port == ports["health"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert parsed.image == env["KUBEFUSION_IMAGE"]
    expected = (
        (values.get("watch", {}).get("namespaces") or [NAMESPACE])
        if values.get("watch", {}).get("mode") == "namespaced"
        else []
    )
    assert parsed.namespace == expected


def test_clashing_ports_fail_clearly() -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match=r"metrics\.port and operator\.healthPort must differ"):
        render({"metrics": {"port": 9000}, "operator": {"healthPort": 9000}})


def test_notes_tell_how_to_check_and_use_the_operator() -> None:
    from packaging_chart import render_manifests

    notes = render_manifests({})["kubefusion/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{RELEASE}-kubefusion" in notes
    assert "kubectl get fr -w" in notes and "kubefusion.dev/retry-stage" in notes
    assert "crds/fusionrun.yaml" not in notes  # the chart installed the CRD
    external = render_manifests(VALUE_SETS["external-crd-and-sa"])["kubefusion/templates/NOTES.txt"]
    assert "crds/fusionrun.yaml" in external
