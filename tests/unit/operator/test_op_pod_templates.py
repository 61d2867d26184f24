"""Every pod template the operator can render is valid (kubernetes_validate, strict) and meets the Pod
Security `restricted` profile, checked by the same code as the emulator's admission check; the
spec.podSecurity, spec.scheduling and spec.serving.modelCache fields reach every pod they should."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from kubefusion_operator.planner import plan_tasks
from kubefusion_operator.render import pods
from kubefusion_operator.render.names import RenderContext
from kubefusion_operator.render.task import build_task_children
from kubefusion_operator.validation import load_fusionrun, validate_document

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "integration" / "operator"))
from emulator_admission.pod_security import pod_specs, restricted_violations  # noqa: E402

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def every_new_field(model_cache: dict[str, Any]) -> dict[str, Any]:
    """The WRPO example with every field of spec.podSecurity, spec.scheduling and the model cache set."""
    doc = load_fusionrun(REPO / "examples" / "wrpo-llama3-8b.yaml").model_dump(by_alias=True, mode="json")
    doc["spec"]["podSecurity"] = {
        "runAsUser": 1001,
        "runAsGroup": 1002,
        "fsGroup": 1003,
        "supplementalGroups": [5000],
        "stages": {"serving": {"runAsUser": 2001}, "training": {"platformAssignsIds": True}},
    }
    zone = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}
                ]
            }
        }
    }
    doc["spec"]["scheduling"] = {
        "nodeSelector": {"pool": "cpu"},
        "tolerations": [{"key": "spot", "operator": "Exists"}],
        "affinity": zone,
        "priorityClassName": "batch-low",
        "workloadPriorityClass": "research",
        "stages": {
            stage: {"nodeSelector": {"pool": "gpu"}, "tolerations": [GPU_TAINT], "priorityClassName": "gpu"}
            for stage in ("serving", "scoring", "training", "evaluation")
        }
        | {"sampling": {"workloadPriorityClass": "urgent"}},
    }
    doc["spec"]["serving"]["modelCache"] = model_cache
    doc["spec"]["target"]["serving"] = {"gpus": 1, "maxModelLen": 4096}
    doc["spec"]["stageDeadlineSeconds"] = {"score": 7200, "wrpo": 86400}
    doc["spec"]["queueName"] = "team-a"
    doc["spec"]["credentials"]["storageSecret"] = "s3-creds"
    doc["spec"]["evaluation"] = {"heldOutFraction": 0.05, "maxPrompts": 50}
    return doc


SPECS = {e.stem: (lambda e=e: load_fusionrun(e)) for e in EXAMPLES} | {
    "every-field-pvc-cache": lambda: validate_document(
        every_new_field({"pvc": "hf-cache", "subPath": "hub"})
    ),
    "every-field-sized-cache": lambda: validate_document(
        every_new_field({"size": "300Gi", "storageClassName": "local-nvme"})
    ),
}


def rendered(run: Any) -> list[dict[str, Any]]:
    ctx = RenderContext(run.name, "team-a", "0b6e1c1e-0000-4000-8000-000000000001", run.spec)
    return [obj for task in plan_tasks(run.spec) for obj in build_task_children(ctx, task)]


def templates(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(path, pod template) of a workload."""
    if obj["kind"] == "PyTorchJob":
        return [(r, s["template"]) for r, s in obj["spec"]["pytorchReplicaSpecs"].items()]
    if obj["kind"] in ("Job", "Deployment"):
        return [("template", obj["spec"]["template"])]
    return []


@pytest.mark.parametrize("name", SPECS)
def test_every_pod_template_is_valid_and_restricted(name: str) -> None:
    objs = rendered(SPECS[name]())
    checked = 0
    for obj in objs:
        for path, template in templates(obj):
            where = f"{obj['kind']}/{obj['metadata']['name']} {path}"
            # Strict schema of the template itself (PyTorchJob's own schema is checked in test_op_render).
            pod_template = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "t"},
                "template": template,
            }
            kubernetes_validate.validate(pod_template, "1.31", strict=True)
            assert restricted_violations(template["spec"]) == [], where
            checked += 1
        if obj["kind"] != "PyTorchJob":
            kubernetes_validate.validate(obj, "1.31", strict=True)
        # The emulator's view of the same object finds every template this test checked.
        assert len(list(pod_specs(obj))) == len(templates(obj))
    assert checked >= 6


def test_the_restricted_check_refuses_the_old_templates() -> None:
    """The check is not vacuous: a template as rendered before security contexts existed fails it."""
    run = load_fusionrun(REPO / "examples" / "quickstart.yaml")
    job = next(o for o in rendered(run) if o["kind"] == "Job")
    bare = copy.deepcopy(job["spec"]["template"]["spec"])
    bare.pop("securityContext")
    for c in bare["containers"]:
        c.pop("securityContext")
    problems = " ".join(restricted_violations(bare))
    for control in (
        "allowPrivilegeEscalation",
        "unrestricted capabilities",
        "runAsNonRoot",
        "seccompProfile",
    ):
        assert control in problems


def test_new_fields_reach_the_pods_they_name() -> None:
    run = validate_document(every_new_field({"pvc": "hf-cache", "subPath": "hub"}))
    by_name = {o["metadata"]["name"]: o for o in rendered(run)}
    name = run.name
    server = by_name[f"{name}-mistral-large-serve"]
    pod = server["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 2001  # serving override
    assert pod["securityContext"]["runAsGroup"] == 1002 and pod["securityContext"]["fsGroup"] == 1003
    assert pod["securityContext"]["supplementalGroups"] == [5000]
    assert GPU_TAINT in pod["tolerations"] and pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["priorityClassName"] == "gpu" and "nodeAffinity" in pod["affinity"]
    assert server["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "research"
    assert server["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    cache = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    assert cache == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "model-cache")
    assert mount == {"name": "model-cache", "mountPath": pods.MODEL_CACHE_MOUNT, "subPath": "hub"}
    # GPU stages carry the GPU toleration; CPU stages only the run-wide one.
    for stage in ("score", "score-target", "sft", "wrpo", "evaluate"):
        obj = by_name[f"{name}-{stage}"]
        for _, template in templates(obj):
            assert GPU_TAINT in template["spec"]["tolerations"], stage
    for stage in ("prepare", "build", "sample-target"):
        tolerations = by_name[f"{name}-{stage}"]["spec"]["template"]["spec"]["tolerations"]
        assert tolerations == [{"key": "spot", "operator": "Exists"}], stage
    sample = by_name[f"{name}-sample-target"]
    assert sample["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "urgent"
    # Training: the platform assigns ids (OpenShift); nothing else changes.
    sft = by_name[f"{name}-sft"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert "runAsUser" not in sft["securityContext"] and sft["securityContext"]["runAsNonRoot"] is True
    assert by_name[f"{name}-wrpo"]["spec"]["runPolicy"]["activeDeadlineSeconds"] == 86400
    assert by_name[f"{name}-score"]["spec"]["activeDeadlineSeconds"] == 7200
    # The target server: spec.target.serving, not the first source's 8 GPUs.
    target = by_name[f"{name}-serve-target"]["spec"]["template"]["spec"]["containers"][0]
    assert target["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--max-model-len" in target["args"]


def test_default_caches_and_requests() -> None:
    run = load_fusionrun(REPO / "examples" / "fusechat3-llama31-8b.yaml")
    by_name = {o["metadata"]["name"]: o for o in rendered(run)}
    server = by_name["fusechat3-llama31-8b-mistral-large-serve"]["spec"]["template"]["spec"]
    vllm = server["containers"][0]
    # Mistral-Large-Instruct-2407 (122.6B, the size `kubefusion plan` uses) in bf16 with 20% headroom:
    # a sized volume, requested from the node.
    cache = next(v for v in server["volumes"] if v["name"] == "model-cache")
    assert cache["emptyDir"]["sizeLimit"] == "295Gi"
    assert vllm["resources"]["requests"]["ephemeral-storage"] == f"{295 + pods.TMP_SIZE_GI}Gi"
    assert vllm["resources"]["requests"]["cpu"] == "32" and vllm["resources"]["requests"]["memory"] == "256Gi"
    env = {e["name"]: e.get("value") for e in vllm["env"]}
    assert env["HF_HOME"] == pods.MODEL_CACHE_MOUNT and env["HOME"] == "/tmp"
    assert server["securityContext"]["runAsUser"] == pods.DEFAULT_UID
    sample = by_name["fusechat3-llama31-8b-gemma-2-27b-sample"]["spec"]
    assert sample["backoffLimitPerIndex"] == 3 and sample["completionMode"] == "Indexed"
    rules = sample["podFailurePolicy"]["rules"]
    assert rules == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]


def test_parameters_billions_sizes_the_model_cache_of_models_no_table_knows() -> None:
    """A house model sized only by its spec's parametersBillions gets the cache `kubefusion plan` sizes,
    in its server, the scoring Job and the training pods."""
    doc = load_fusionrun(REPO / "examples" / "fusechat3-llama31-8b.yaml").model_dump(
        by_alias=True, mode="json"
    )
    doc["spec"]["sources"][0].update(model="example-org/house-model", parametersBillions=70.0)
    doc["spec"]["target"].update(model="example-org/house-student", parametersBillions=13.0)
    doc["spec"]["scoring"]["rewardModel"].update(model="example-org/house-judge", parametersBillions=27.0)
    objs = rendered(validate_document(doc))

    def caches(name: str) -> set[str]:
        """The model-cache sizes of the workloads named `name` (a server's Service shares its name)."""
        return {
            v["emptyDir"]["sizeLimit"]
            for obj in objs
            if obj["metadata"]["name"] == name
            for _, template in templates(obj)
            for v in template["spec"]["volumes"]
            if v["name"] == "model-cache"
        }

    # bf16 weights plus 20%: 70B -> 169Gi, 13B -> 32Gi, 27B -> 65Gi (before, all three got MIN_CACHE_GI, 20Gi).
    assert caches("fusechat3-llama31-8b-gemma-2-27b-serve") == {"169Gi"}
    assert caches("fusechat3-llama31-8b-score") == {"65Gi"}
    assert caches("fusechat3-llama31-8b-sft") == caches("fusechat3-llama31-8b-dpo") == {"32Gi"}


def test_evaluation_serves_every_candidate_with_vllm_on_gpus() -> None:
    from kubefusion_operator.render.configmap import build_config_map

    doc = every_new_field({"pvc": "hf-cache"})
    doc["spec"]["recipe"] = "fusechat3"
    doc["spec"]["training"]["dpo"] = {"resources": {"gpusPerNode": 8}}
    doc["spec"]["training"].pop("wrpo")
    doc["spec"]["stageDeadlineSeconds"] = {"dpo": 86400}
    run = validate_document(doc)
    by_name = {o["metadata"]["name"]: o for o in rendered(run)}
    name = run.name
    expected = {
        "original": "meta-llama/Meta-Llama-3-8B-Instruct",
        "sft": "/mnt/kubefusion/train/sft/final",
        "dpo": "/mnt/kubefusion/train/dpo/final",
    }
    for candidate, model in expected.items():
        deploy = by_name[f"{name}-eval-{candidate}"]
        assert deploy["kind"] == "Deployment"
        vllm = deploy["spec"]["template"]["spec"]["containers"][0]
        args = vllm["args"]
        assert args[args.index("--model") + 1] == model
        assert args[args.index("--served-model-name") + 1] == f"eval-{candidate}"
        assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1  # spec.target.serving
        assert by_name[f"{name}-eval-{candidate}"]["metadata"]["labels"]["kubefusion.dev/stage"] == "evaluate"
    command = by_name[f"{name}-evaluate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--include-sources" not in command and command[command.index("--device") + 1] == "cuda"
    ctx = RenderContext(run.name, "team-a", "uid", run.spec)
    config = build_config_map(ctx)["data"]["run.yaml"]
    assert f"eval-sft: http://{name}-eval-sft.team-a.svc:8000/v1" in config
