"""Which training operator the emulated cluster has, and stand-ins for what those operators do.

    trainer_cluster(emu, trainjob=True, pytorchjob=False)   # serve these CRDs (schema-checked) only
    install(emu, "trainjob")                               # a CRD installed while the operator runs
    ops = TrainingOperators(emu, "ns1")
    await ops.start_pods("PyTorchJob", name)                # one pod per node, holding its GPUs
    await ops.fail_rank("PyTorchJob", name, rank=1)         # what the real controller then does

The stand-ins follow the real controllers where the tests rely on it:
- training operator v1 (PyTorchJob): a failed pod under restartPolicy OnFailure/ExitCode is restarted
  in place (the job keeps running, its peers wait); under Never the PyTorchJob is Failed, and
  cleanPodPolicy Running (or All) deletes its remaining running pods, None keeps them;
- Trainer v2 (TrainJob over JobSet): a failed node makes the JobSet recreate every node (the whole
  gang) while its runtime's failurePolicy.maxRestarts allows (the runtime object must be stored in the
  emulator, e.g. the chart's); after that the JobSet fails, deletes its Jobs' pods and the TrainJob
  turns Failed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from op_cluster import PYTORCHJOBS, TRAINJOBS, Cluster, condition, run_status
from op_emulator import RecordingEmulator

sys.path.insert(0, str(Path(__file__).resolve().parent / "emulator_admission"))
import crd_schemas

PODS = "v1/pods"
RUNTIMES = "trainer.kubeflow.org/v1alpha1/clustertrainingruntimes"
CRDS = {
    "trainjob": [(TRAINJOBS, "TrainJob", True), (RUNTIMES, "ClusterTrainingRuntime", False)],
    "pytorchjob": [(PYTORCHJOBS, "PyTorchJob", True)],
}
KIND_KEYS = {"TrainJob": TRAINJOBS, "PyTorchJob": PYTORCHJOBS}


def install(emulator: RecordingEmulator, backend: str) -> None:
    """Serve a training operator's CRDs (as `kubectl apply` of its manifests would)."""
    for key, kind, namespaced in CRDS[backend]:
        emulator.declare(key, kind, namespaced=namespaced, subresources=("status",) if namespaced else ())


def withhold(emulator: RecordingEmulator, backend: str) -> None:
    """Stop serving a training operator's CRDs: its paths answer 404, discovery leaves it out."""
    for key, _, _ in CRDS[backend]:
        withdraw = getattr(emulator, "withdraw", None)
        if withdraw is not None:
            withdraw(key)
        else:
            for known in [r for r in emulator.resources if f"{r.group}/{r.version}/{r.plural}" == key]:
                del emulator.resources[known]


def trainer_cluster(emulator: RecordingEmulator, *, trainjob: bool, pytorchjob: bool) -> None:
    """A cluster with these training operators (and no other), their objects schema-checked."""
    for backend, wanted in (("trainjob", trainjob), ("pytorchjob", pytorchjob)):
        (install if wanted else withhold)(emulator, backend)
    if crd_schemas.check not in emulator.admission_checks:
        # First: kube-apiserver checks a custom resource's schema before validating admission (webhooks,
        # the names check) sees it.
        emulator.admission_checks.insert(0, crd_schemas.check)


async def advance_until(
    emulator: RecordingEmulator,
    done: Callable[[], Any],
    what: str,
    run: str = "quickstart",
    timeout: float = 30,
) -> Any:
    """Play the cluster (servers ready, Jobs complete, training succeeds) until done(); the run must not fail."""
    cluster = Cluster(emulator)
    deadline = time.monotonic() + timeout
    while not (value := done()):
        status = run_status(emulator, "ns1", run)
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {status}"
        assert condition(emulator, "ns1", run, "Failed") != "True", status
        await cluster.advance()
        await asyncio.sleep(0.05)
    return value


def _gpus(template: dict[str, Any]) -> int:
    containers = template.get("spec", {}).get("containers") or [{}]
    return int(((containers[0].get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))


class TrainingOperators:
    """Stand-ins for the training operator v1 and Trainer v2 controllers (see the module docstring)."""

    def __init__(self, emulator: RecordingEmulator, namespace: str = "ns1") -> None:
        self.emu = emulator
        self.ns = namespace
        self.restarts: dict[str, int] = {}  # TrainJob -> whole-gang restarts so far

    def max_restarts(self, trainjob: dict[str, Any]) -> int:
        """The JobSet failure policy of the TrainJob's runtime (stored in the emulator), 0 without one."""
        ref = trainjob["spec"]["runtimeRef"]
        runtime = self.emu.find(RUNTIMES, None, ref["name"]) if ref.get("kind") != "TrainingRuntime" else None
        policy = ((runtime or {}).get("spec", {}).get("template", {}).get("spec", {})).get(
            "failurePolicy"
        ) or {}
        return int(policy.get("maxRestarts", 0))

    def job(self, kind: str, name: str) -> dict[str, Any]:
        job = self.emu.find(KIND_KEYS[kind], self.ns, name)
        assert job is not None, f"{kind}/{name} does not exist"
        return job

    def _nodes(self, kind: str, job: dict[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
        """(pod name, GPUs, labels) of each node of a training job."""
        name = job["metadata"]["name"]
        if kind == "PyTorchJob":
            replicas = job["spec"]["pytorchReplicaSpecs"]
            out = [
                (f"{name}-master-0", _gpus(replicas["Master"]["template"]), replicas["Master"]["template"])
            ]
            worker = replicas.get("Worker")
            for i in range((worker or {}).get("replicas", 0)):
                out.append((f"{name}-worker-{i}", _gpus(worker["template"]), worker["template"]))
            return out
        trainer = job["spec"]["trainer"]
        gpus = int(trainer["resourcesPerNode"].get("limits", {}).get("nvidia.com/gpu", 0))
        patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
        template = patch["replicatedJobs"][0]["template"]["spec"]["template"]
        return [(f"{name}-node-0-{i}", gpus, template) for i in range(trainer["numNodes"])]

    async def start_pods(self, kind: str, name: str) -> list[str]:
        """The job's pods, Running, one per node (what the operator's Jobs and the kubelet do)."""
        job = self.job(kind, name)
        created = []
        for pod_name, gpus, template in self._nodes(kind, job):
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "namespace": self.ns,
                    "labels": {**(template.get("metadata", {}).get("labels") or {}), "job-name": name},
                },
                "spec": {
                    "containers": [
                        {"name": "trainer", "image": "x", "resources": {"limits": {"nvidia.com/gpu": gpus}}}
                    ]
                },
            }
            resp = await self.emu.post(f"/api/v1/namespaces/{self.ns}/pods", json=pod)
            assert resp.status == 201, await resp.text()
            await self.emu.write(PODS, self.ns, pod_name, {"status": {"phase": "Running"}})
            created.append(pod_name)
        return created

    def pods(self, name: str) -> list[dict[str, Any]]:
        return [p for p in self.emu.live(PODS, self.ns) if p["metadata"]["labels"].get("job-name") == name]

    def gpus_held(self, name: str) -> int:
        """GPUs requested by the job's pods that still run (or wait to run)."""
        return sum(
            int(p["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
            for p in self.pods(name)
            if (p.get("status") or {}).get("phase") in ("Running", "Pending", None)
        )

    async def _delete_running_pods(self, name: str) -> None:
        for pod in self.pods(name):
            if (pod.get("status") or {}).get("phase") == "Running":
                resp = await self.emu.delete(f"/api/v1/namespaces/{self.ns}/pods/{pod['metadata']['name']}")
                assert resp.status == 200, await resp.text()

    async def fail_rank(self, kind: str, name: str, rank: int) -> None:
        """The pod of node `rank` exits non-zero; the controller reacts as the real one does."""
        job = self.job(kind, name)
        pod_name = self._nodes(kind, job)[rank][0]
        await self.emu.write(PODS, self.ns, pod_name, {"status": {"phase": "Failed"}})
        if kind == "PyTorchJob":
            role = "Master" if rank == 0 else "Worker"
            policy = job["spec"]["pytorchReplicaSpecs"][role]["restartPolicy"]
            if policy in ("OnFailure", "ExitCode", "Always"):
                # restarted alone: the job runs on while the other ranks wait for it in NCCL
                await self.emu.write(PODS, self.ns, pod_name, {"status": {"phase": "Running"}})
                return
            if job["spec"]["runPolicy"].get("cleanPodPolicy") in ("Running", "All"):
                await self._delete_running_pods(name)
            message = f"PyTorchJob {name} is failed because 1 {role} replica(s) failed."
            conditions = [
                {"type": "Failed", "status": "True", "reason": "PyTorchJobFailed", "message": message}
            ]
            await self.emu.write(PYTORCHJOBS, self.ns, name, {"status": {"conditions": conditions}})
            return
        # TrainJob: its JobSet recreates every node's Job (the whole gang) while the runtime's
        # failurePolicy.maxRestarts allows; then the JobSet fails and removes its Jobs and their pods.
        restarts = self.restarts.get(name, 0)
        if restarts < self.max_restarts(job):
            self.restarts[name] = restarts + 1
            await self._delete_running_pods(name)
            for pod in self.pods(name):  # the failed one too: Recreate deletes every Job
                await self.emu.delete(f"/api/v1/namespaces/{self.ns}/pods/{pod['metadata']['name']}")
            await self.start_pods(kind, name)
            return
        await self._delete_running_pods(name)
        condition = {
            "type": "Failed",
            "status": "True",
            "reason": "JobSetFailed",
            "message": f"jobset failed: node-0 job failed (rank {rank})",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
        await self.emu.write(TRAINJOBS, self.ns, name, {"status": {"conditions": [condition]}})
