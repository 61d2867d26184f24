"""Training stages as Kubeflow PyTorchJobs (kubeflow.org/v1, training operator v1.9): a Master plus
nodes-1 Workers.

Failure handling: the v1 operator restarts pods one at a time (OnFailure/ExitCode) and has no way to
restart the whole group, so a restarted rank would wait for peers stuck in NCCL until their timeout.
Pods therefore never restart (restartPolicy Never): one failed rank fails the PyTorchJob at once,
cleanPodPolicy Running deletes its other pods (their GPUs are released), and the stage is Failed.
`kubefusion.dev/retry-stage` then starts a new PyTorchJob, which resumes from the latest checkpoint.
A TrainJob (render/trainjob.py) restarts the whole group by itself through JobSet's failure policy.
"""

from __future__ import annotations

import copy
from typing import Any

from kubefusion_operator.planner import Task
from kubefusion_operator.render import pods
from kubefusion_operator.render.names import RenderContext, task_child_name
from kubefusion_operator.render.training import procs_per_node, trainer_pod

CONTAINER = "pytorch"  # the training operator looks for this container name
MASTER_PORT = 23456  # the operator's default; it sets PET_MASTER_PORT/MASTER_PORT from this port


def _run_policy(ctx: RenderContext, task: Task, suspended: bool) -> dict[str, Any]:
    # backoffLimit 0: a failed rank fails the job (the operator retries the stage as a whole);
    # cleanPodPolicy Running: the other ranks' pods go at once, giving their GPUs back.
    policy: dict[str, Any] = {"backoffLimit": 0, "cleanPodPolicy": "Running", "suspend": suspended}
    deadline = ctx.spec.stage_deadline_seconds.get(task.stage)
    if deadline:
        policy["activeDeadlineSeconds"] = deadline
    return policy


def build_pytorchjob(ctx: RenderContext, task: Task, *, suspended: bool = False) -> dict[str, Any]:
    nodes = ctx.spec.training_stages()[task.name].resources.nodes
    pod = trainer_pod(ctx, task, CONTAINER)
    pod["spec"]["containers"][0]["ports"].append(
        {"name": "pytorchjob-port", "containerPort": MASTER_PORT, "protocol": "TCP"}
    )

    def replica(count: int) -> dict[str, Any]:
        return {"replicas": count, "restartPolicy": "Never", "template": copy.deepcopy(pod)}

    replicas = {"Master": replica(1)}
    if nodes > 1:
        replicas["Worker"] = replica(nodes - 1)
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": pods.workload_metadata(ctx, task_child_name(ctx.name, task), task),
        "spec": {
            "nprocPerNode": str(procs_per_node(ctx, task)),
            "runPolicy": _run_policy(ctx, task, suspended),
            "pytorchReplicaSpecs": replicas,
        },
    }
