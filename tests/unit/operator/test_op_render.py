"""Every rendered child is a valid Kubernetes object with the run's labels, owner and storage."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubefusion_operator.planner import TaskKind, plan_tasks
from kubefusion_operator.render.configmap import build_config_map
from kubefusion_operator.render.names import RUN_LABEL, STAGE_LABEL, RenderContext, child_name, truncated
from kubefusion_operator.render.task import build_task_children
from kubefusion_operator.validation import load_fusionrun

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@functools.cache
def pytorchjob_validator() -> jsonschema.Draft7Validator | None:
    """The PyTorchJob v1 schema from the shared folder (never copied here); None where it is absent."""
    candidates = (
        [Path(os.environ["KUBEFUSION_SHARED_DIR"])] if os.environ.get("KUBEFUSION_SHARED_DIR") else []
    )
    candidates.append(REPO.parent / "shared")
    for folder in candidates:
        path = folder / "schemas" / "kubeflow.org_pytorchjobs.yaml"
        if path.is_file():
            crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
            return jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])
    return None


def all_children(example: Path, **ctx_args) -> tuple[RenderContext, list[dict]]:
    run = load_fusionrun(example)
    ctx = RenderContext(run.name, "team-a", "0b6e1c1e-0000-4000-8000-000000000001", run.spec, **ctx_args)
    objs = [build_config_map(ctx)]
    for task in plan_tasks(run.spec):
        objs += build_task_children(ctx, task)
    return ctx, objs


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_children_validate_strictly(example: Path) -> None:
    ctx, objs = all_children(example)
    validator = pytorchjob_validator()
    for obj in objs:
        if obj["kind"] == "PyTorchJob":
            if validator is not None:
                validator.validate(obj)
            continue
        kubernetes_validate.validate(obj, "1.31", strict=True)
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names)), "two children share a kind and name"
    for obj in objs:
        meta = obj["metadata"]
        assert meta["ownerReferences"][0]["uid"] == ctx.uid and meta["ownerReferences"][0]["controller"]
        assert meta["labels"][RUN_LABEL] == ctx.name
        assert meta["labels"]["app.kubernetes.io/instance"] == ctx.name
        assert len(meta["name"]) <= 63


def test_pytorchjob_schema_check() -> None:
    validator = pytorchjob_validator()
    if validator is None:
        pytest.skip(
            "kubeflow.org_pytorchjobs.yaml not found (set KUBEFUSION_SHARED_DIR to the shared folder)"
        )
    _, objs = all_children(REPO / "examples" / "fusechat3-llama31-8b.yaml")
    jobs = [o for o in objs if o["kind"] == "PyTorchJob"]
    assert [j["metadata"]["name"] for j in jobs] == ["fusechat3-llama31-8b-sft", "fusechat3-llama31-8b-dpo"]
    for job in jobs:
        validator.validate(job)
        replicas = job["spec"]["pytorchReplicaSpecs"]
        assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1  # nodes: 2
        container = replicas["Master"]["template"]["spec"]["containers"][0]
        assert container["name"] == "pytorch"
        assert container["resources"]["limits"] == {"nvidia.com/gpu": 8}
        assert job["spec"]["nprocPerNode"] == "8"
        assert container["command"][:6] == [
            "torchrun",
            "-m",
            "kubefusion_operator",
            "stage",
            "train",
            "--stage",
        ]
        assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in replicas["Master"]["template"]["spec"][
            "volumes"
        ]
    broken = dict(jobs[0], spec={**jobs[0]["spec"], "runPolicy": {"backoffLimit": "three"}})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_vllm_deployment_and_service() -> None:
    ctx, objs = all_children(REPO / "examples" / "fusechat3-llama31-8b.yaml")
    deploy = next(
        o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("mistral-large-serve")
    )
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("vllm/vllm-openai:")
    args = container["args"]
    assert args[args.index("--model") + 1] == "mistralai/Mistral-Large-Instruct-2407"
    assert args[args.index("--served-model-name") + 1] == "mistralai/Mistral-Large-Instruct-2407"
    assert args[args.index("--tensor-parallel-size") + 1] == "8"
    assert args[args.index("--max-model-len") + 1] == "8192"
    assert "--enable-prefix-caching" in args and args[args.index("--seed") + 1] == "0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600  # 70B weights from a cold cache
    assert deploy["spec"]["progressDeadlineSeconds"] > startup["periodSeconds"] * startup["failureThreshold"]
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    service = next(
        o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == deploy["metadata"]["name"]
    )
    assert service["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    config = yaml.safe_load(objs[0]["data"]["run.yaml"])
    svc = deploy["metadata"]["name"]
    assert config["endpoints"]["mistral-large"] == f"http://{svc}.team-a.svc:8000/v1"
    assert config["storageRoot"] == ctx.storage_root and config["name"] == ctx.name


def test_sampling_is_an_indexed_job_per_source() -> None:
    _, objs = all_children(REPO / "examples" / "fusechat3-llama31-8b.yaml")
    job = next(o for o in objs if o["kind"] == "Job" and o["metadata"]["name"].endswith("gemma-2-27b-sample"))
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] >= 2
    command = spec["template"]["spec"]["containers"][0]["command"]
    assert command[:6] == ["kubefusion", "stage", "sample", "--phase", "sources", "--source"]
    assert command[command.index("--shard") + 1] == f"$(JOB_COMPLETION_INDEX)/{spec['completions']}"
    assert command[command.index("--config") + 1] == "/etc/kubefusion/run.yaml"
    assert command[command.index("--metrics-port") + 1] == "9090"
    assert job["metadata"]["labels"][STAGE_LABEL] == "sample"


def test_queue_and_suspend() -> None:
    run = load_fusionrun(REPO / "examples" / "quickstart.yaml")
    spec = run.spec.model_copy(update={"queue_name": "team-queue"})
    ctx = RenderContext(run.name, "ns", "uid", spec)
    for task in plan_tasks(spec):
        for obj in build_task_children(ctx, task, suspended=True):
            if obj["kind"] in ("Job", "PyTorchJob"):
                assert obj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"
            if obj["kind"] == "Job":
                assert obj["spec"]["suspend"] is True
            if obj["kind"] == "PyTorchJob":
                assert obj["spec"]["runPolicy"]["suspend"] is True
            if obj["kind"] == "Deployment":
                assert obj["spec"]["replicas"] == 0
            if obj["kind"] == "Deployment":  # Kueue's pod integration: servers count against quota
                assert obj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"
                pod_labels = obj["spec"]["template"]["metadata"]["labels"]
                assert pod_labels["kueue.x-k8s.io/queue-name"] == "team-queue"
            if obj["kind"] == "Service":
                assert "kueue.x-k8s.io/queue-name" not in obj["metadata"]["labels"]
    assert {t.kind for t in plan_tasks(spec)} == set(TaskKind)


def test_names_are_deterministic_and_fit() -> None:
    long_run = "r" * 63
    a, b = child_name(long_run, "qwen-2-5-math-72b-sample"), child_name(long_run, "qwen-2-5-math-72b-serve")
    assert len(a) <= 63 and len(b) <= 63 and a != b
    assert child_name(long_run, "qwen-2-5-math-72b-sample") == a
    assert truncated("short") == "short"
    assert child_name("7run", "score")[0].isalpha()
