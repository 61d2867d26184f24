"""Training stages as Kubeflow Trainer v2 TrainJobs (trainer.kubeflow.org/v1alpha1, Trainer >= v2.2).

The TrainJob names a runtime (the chart's ClusterTrainingRuntime, or one the spec names) that owns
the JobSet shape: the torch mlPolicy, /dev/shm, the restricted security context and the whole-gang
restart. A runtime of the user's own needs a replicated job and container named `node` and /dev/shm. The run's own pieces go in through `spec.trainer` (image, command, nodes, processes,
resources, env) and one `runtimePatches` entry for the `node` replicated job (volumes, mounts, labels,
node selection, tolerations, security context). The patch is projected from the same pod the
PyTorchJob backend runs (render/training.py), so both backends get the same pod settings.
"""

from __future__ import annotations

from typing import Any

from kubefusion_operator.api import GROUP
from kubefusion_operator.planner import Task
from kubefusion_operator.render import pods
from kubefusion_operator.render.names import RenderContext, task_child_name
from kubefusion_operator.render.training import procs_per_node, trainer_image, trainer_pod

TRAINER_GROUP = "trainer.kubeflow.org"
NODE = "node"  # the trainer's replicated job and container in a torch runtime
PATCH_MANAGER = f"{GROUP}/operator"
ENV_DIR_VARIABLE = "KUBEFUSION_ENV_DIR"  # kubefusion_trainer.cli exports each file in it as a variable
STORAGE_CREDENTIALS = "storage-credentials"
STORAGE_CREDENTIALS_DIR = "/var/run/kubefusion/storage-credentials"
# Pod and container fields a runtime patch may set (TrainJob v2.3 schema); the rest is the runtime's
# or spec.trainer's. Anything else in the training pod is an error, never silently dropped.
POD_FIELDS = {
    "affinity",
    "imagePullSecrets",
    "nodeSelector",
    "schedulingGates",
    "securityContext",
    "serviceAccountName",
    "terminationGracePeriodSeconds",
    "tolerations",
    "volumes",
}
CONTAINER_PATCH_FIELDS = {"name", "securityContext", "volumeMounts"}
TRAINER_FIELDS = {"image", "command", "env", "resources", "ports", "envFrom"}  # spec.trainer or handled


def _storage_credentials(envfrom: list[dict[str, Any]]) -> tuple[list[dict], list[dict], list[dict]]:
    """envFrom (not patchable) as a mounted Secret the trainer exports: (volumes, mounts, env)."""
    secrets = [e["secretRef"]["name"] for e in envfrom if "secretRef" in e]
    if len(secrets) != len(envfrom) or len(secrets) > 1:
        raise ValueError(f"a TrainJob can take one secretRef through envFrom, not {envfrom}")
    if not secrets:
        return [], [], []
    volume = {"name": STORAGE_CREDENTIALS, "secret": {"secretName": secrets[0]}}
    mount = {"name": STORAGE_CREDENTIALS, "mountPath": STORAGE_CREDENTIALS_DIR, "readOnly": True}
    return [volume], [mount], [{"name": ENV_DIR_VARIABLE, "value": STORAGE_CREDENTIALS_DIR}]


def runtime_patch(pod: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The `node` job's runtimePatches entry for this pod template, and the env spec.trainer takes."""
    spec = pod["spec"]
    (container,) = spec["containers"]
    unknown = (set(spec) - POD_FIELDS - {"containers"}) | (
        set(container) - CONTAINER_PATCH_FIELDS - TRAINER_FIELDS
    )
    if unknown:
        raise ValueError(f"the training pod sets fields a TrainJob cannot patch: {sorted(unknown)}")
    volumes, mounts, env = _storage_credentials(container.get("envFrom") or [])
    pod_patch = {k: v for k, v in spec.items() if k in POD_FIELDS}
    pod_patch["volumes"] = [*pod_patch.get("volumes", []), *volumes]
    node = {k: v for k, v in container.items() if k in CONTAINER_PATCH_FIELDS}
    node.update(name=NODE, volumeMounts=[*container.get("volumeMounts", []), *mounts])
    pod_patch["containers"] = [node]
    patch = {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": NODE,
                            "template": {
                                "spec": {"template": {"metadata": pod["metadata"], "spec": pod_patch}}
                            },
                        }
                    ]
                }
            }
        },
    }
    return patch, [*container.get("env", []), *env]


def runtime_ref(ctx: RenderContext) -> dict[str, str]:
    chosen = ctx.spec.training.runtime
    name, kind = (chosen.name, chosen.kind) if chosen else (ctx.training_runtime, "ClusterTrainingRuntime")
    return {"apiGroup": TRAINER_GROUP, "kind": kind, "name": name}


def build_trainjob(ctx: RenderContext, task: Task, *, suspended: bool = False) -> dict[str, Any]:
    resources = ctx.spec.training_stages()[task.name].resources
    pod = trainer_pod(ctx, task, NODE, shm=False)  # the runtime mounts /dev/shm
    container = pod["spec"]["containers"][0]
    patch, env = runtime_patch(pod)
    return {
        "apiVersion": f"{TRAINER_GROUP}/v1alpha1",
        "kind": "TrainJob",
        "metadata": pods.workload_metadata(ctx, task_child_name(ctx.name, task), task),
        "spec": {
            "runtimeRef": runtime_ref(ctx),
            "suspend": suspended,
            "trainer": {
                "image": trainer_image(ctx, task),
                "command": container["command"],
                "env": env,
                "numNodes": resources.nodes,
                "numProcPerNode": procs_per_node(ctx, task),
                "resourcesPerNode": container["resources"],
            },
            "runtimePatches": [patch],
        },
    }
