"""The ClusterTrainingRuntime the chart ships for TrainJobs: valid against Trainer v2.3's CRD, restricted,
/dev/shm, a whole-gang restart, and a valid pod once a rendered TrainJob's patch is applied to it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
from packaging_chart import REPO_ROOT, VALUE_SETS, find, only, render
from packaging_training import crd_schemas

from kubefusion_operator.planner import plan_tasks
from kubefusion_operator.render.names import RenderContext
from kubefusion_operator.render.task import build_task_children
from kubefusion_operator.validation import load_fusionrun

SHIPPED = VALUE_SETS["trainer-v2"]
needs_schemas = pytest.mark.skipif(not crd_schemas.schemas_available(), reason=crd_schemas.MISSING_REASON)


def runtime(values: dict[str, Any] = SHIPPED) -> dict[str, Any]:
    return only(render(values), "ClusterTrainingRuntime")


def node_template(obj: dict[str, Any]) -> dict[str, Any]:
    (node,) = obj["spec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"
    return node["template"]["spec"]["template"]


def test_auto_ships_it_only_where_trainer_v2_is_served() -> None:
    # `helm template` without --api-versions knows no trainer.kubeflow.org: as on a PyTorchJob-only cluster
    assert not find(render({}), "ClusterTrainingRuntime")
    assert not find(render({"trainingRuntime": {"create": False}}), "ClusterTrainingRuntime")
    assert runtime()["metadata"]["name"] == "team-torch"


@pytest.mark.parametrize(
    "values", [{}, SHIPPED, {"trainingRuntime": {"create": False, "name": "platform-torch"}}]
)
def test_the_operator_references_the_runtime_by_name(values: dict[str, Any]) -> None:
    container = only(render(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    name = values.get("trainingRuntime", {}).get("name", "kubefusion-torch")
    assert f"--training-runtime={name}" in container["args"]


def test_values_schema_refuses_a_bad_runtime_setting() -> None:
    with pytest.raises(helm.HelmValuesError):
        render({"trainingRuntime": {"create": "yes"}})
    with pytest.raises(helm.HelmValuesError):
        render({"trainingRuntime": {"maxRestart": 2}})


@needs_schemas
def test_the_shipped_runtime_validates_against_the_v2_3_crd() -> None:
    shipped = runtime()
    assert crd_schemas.problems("trainer.kubeflow.org", "clustertrainingruntimes", shipped) == []
    broken = copy.deepcopy(shipped)
    broken["spec"]["template"]["spec"]["failurePolicy"]["restartStrategy"] = "RestartEverything"
    assert crd_schemas.problems("trainer.kubeflow.org", "clustertrainingruntimes", broken)


def test_torch_policy_shm_restricted_and_whole_gang_restart() -> None:
    shipped = runtime()
    assert shipped["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}
    assert shipped["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
    jobset = shipped["spec"]["template"]["spec"]
    assert jobset["failurePolicy"] == {"maxRestarts": 5, "restartStrategy": "Recreate"}
    (node,) = jobset["replicatedJobs"]
    assert node["template"]["spec"]["backoffLimit"] == 0  # a failed node fails its Job: JobSet restarts all
    assert node["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    pod = node_template(shipped)["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]
    (container,) = pod["containers"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def _by_name(items: list[dict[str, Any]], patch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged = {i["name"]: i for i in items}
    merged.update({i["name"]: i for i in patch})
    return list(merged.values())


def trainer_pod(runtime_obj: dict[str, Any], trainjob: dict[str, Any]) -> dict[str, Any]:
    """The node pod Trainer builds: the runtime's template, the TrainJob's trainer and its patch."""
    pod = copy.deepcopy(node_template(runtime_obj))
    (patch,) = trainjob["spec"]["runtimePatches"]
    (node_patch,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod_patch = node_patch["template"]["spec"]["template"]
    for key in ("labels", "annotations"):
        pod.setdefault("metadata", {}).setdefault(key, {}).update(pod_patch["metadata"].get(key, {}))
    spec = pod["spec"]
    spec["volumes"] = _by_name(spec.get("volumes", []), pod_patch["spec"].get("volumes", []))
    for key, value in pod_patch["spec"].items():
        if key not in ("volumes", "containers"):
            spec[key] = value
    (container,) = spec["containers"]
    (container_patch,) = pod_patch["spec"]["containers"]
    container["volumeMounts"] = _by_name(container["volumeMounts"], container_patch.get("volumeMounts", []))
    trainer = trainjob["spec"]["trainer"]
    container.update(
        image=trainer["image"], command=trainer["command"], resources=trainer["resourcesPerNode"]
    )
    container["env"] = trainer["env"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "node-0", **pod["metadata"]},
        "spec": spec,
    }


@pytest.mark.parametrize("example", sorted((REPO_ROOT / "examples").glob("*.yaml")), ids=lambda p: p.stem)
def test_a_trainjob_on_the_shipped_runtime_makes_a_valid_pod(example: Path) -> None:
    run = load_fusionrun(example)
    ctx = RenderContext(run.name, "team-a", "uid", run.spec, training_backend="trainjob")
    for task in [t for t in plan_tasks(run.spec) if t.kind == "train"]:
        (trainjob,) = build_task_children(ctx, task)
        pod = trainer_pod(runtime(), trainjob)
        kubernetes_validate.validate(pod, "1.31", strict=True)
        volumes = [v["name"] for v in pod["spec"]["volumes"]]
        assert len(volumes) == len(set(volumes)), volumes
        mounts = {m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert mounts <= set(volumes) and "dshm" in mounts
        assert pod["metadata"]["labels"]["kubefusion.dev/run"] == run.name
