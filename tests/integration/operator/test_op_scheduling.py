"""spec.scheduling reaches the pods of every stage the operator creates, as the API server receives them."""
# ruff: noqa: F811

from __future__ import annotations

from typing import Any

import pytest
from op_cluster import condition, create_run, drive_to_end, example, operator_running, run_status
from op_emulator import Admission, emulator  # noqa: F401

pytestmark = pytest.mark.integration

GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SPOT = {"key": "spot", "operator": "Exists"}


def pod_templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj.get("kind") == "PyTorchJob":
        return [r["template"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    return [obj["spec"]["template"]] if obj.get("kind") in ("Job", "Deployment") else []


async def test_gpu_stages_carry_the_tolerations_of_spec_scheduling(emulator, tmp_path) -> None:
    created: list[dict[str, Any]] = []

    def record(_emulator: Any, admission: Admission) -> None:
        if admission.verb == "create" and not admission.system:
            created.append(admission.obj)

    emulator.admission_checks.append(record)
    gpu = {"tolerations": [GPU_TAINT], "nodeSelector": {"pool": "h100"}, "priorityClassName": "gpu-batch"}
    doc = example(
        "wrpo-llama3-8b",
        scheduling={
            "tolerations": [SPOT],
            "stages": {"serving": gpu, "scoring": gpu, "training": gpu, "evaluation": gpu},
        },
        evaluation={"heldOutFraction": 0.05},
    )
    name = doc["metadata"]["name"]
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, doc)
        await drive_to_end(emulator, name, timeout=60)
    assert condition(emulator, "ns1", name, "Succeeded") == "True", run_status(emulator, "ns1", name)
    gpu_stages, cpu_stages = set(), set()
    for obj in created:
        for template in pod_templates(obj):
            pod = template["spec"]
            stage = obj["metadata"]["labels"]["kubefusion.dev/stage"]
            requests_gpu = any(
                "nvidia.com/gpu" in (c.get("resources") or {}).get("limits", {}) for c in pod["containers"]
            )
            if requests_gpu:
                gpu_stages.add(stage)
                assert pod["tolerations"] == [GPU_TAINT], stage  # a workload's list replaces the run's
                assert pod["nodeSelector"] == {"pool": "h100"} and pod["priorityClassName"] == "gpu-batch"
            else:
                cpu_stages.add(stage)
                assert pod["tolerations"] == [SPOT], stage
                assert "nodeSelector" not in pod and "priorityClassName" not in pod, stage
    assert gpu_stages == {"serve-sources", "score", "sft", "serve-target", "score-target", "wrpo", "evaluate"}
    assert cpu_stages == {"prepare", "sample", "build", "sample-target", "build-wrpo"}


async def test_child_watches_select_by_label_on_the_server(emulator, tmp_path) -> None:
    """kopf's `labels=` filter is client-side; the watch requests themselves carry the selector."""
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart"))
        await drive_to_end(emulator, "quickstart")
    watches: dict[str, set[str]] = {}
    for request in emulator._requests:  # kmock's log of parsed requests, with their query parameters
        if request.params.get("watch") in ("true", "1") and request.resource is not None:
            watches.setdefault(request.resource.plural, set()).add(request.params.get("labelSelector", ""))
    for plural in ("deployments", "jobs", "pytorchjobs"):
        assert watches.get(plural) == {"kubefusion.dev/run"}, (plural, watches)
    assert watches["fusionruns"] == {""}  # every run, of course
