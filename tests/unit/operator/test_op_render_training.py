"""Training children for both backends: TrainJobs valid against the Trainer v2.3 CRD, one command."""

from __future__ import annotations

import sys
from pathlib import Path

import kubernetes_validate
import pytest

from kubefusion_operator.api import TrainingRuntimeRef
from kubefusion_operator.planner import TaskKind, plan_tasks
from kubefusion_operator.render.names import RenderContext
from kubefusion_operator.render.task import build_task_children
from kubefusion_operator.render.training import torchrun_command
from kubefusion_operator.render.trainjob import ENV_DIR_VARIABLE, runtime_patch
from kubefusion_operator.validation import load_fusionrun

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
sys.path.insert(0, str(REPO / "tests" / "integration" / "operator" / "emulator_admission"))
import crd_schemas  # noqa: E402

needs_schemas = pytest.mark.skipif(not crd_schemas.schemas_available(), reason=crd_schemas.MISSING_REASON)


def training_children(example: Path, backend: str, **spec_updates) -> tuple[RenderContext, list[dict]]:
    run = load_fusionrun(example)
    spec = run.spec.model_copy(update=spec_updates) if spec_updates else run.spec
    ctx = RenderContext(run.name, "team-a", "uid-1", spec, training_backend=backend)
    objs = [
        obj
        for task in plan_tasks(spec)
        if task.kind == TaskKind.TRAIN
        for obj in build_task_children(ctx, task)
    ]
    return ctx, objs


def node_pod(job: dict) -> dict:
    (patch,) = job["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"
    return node["template"]["spec"]["template"]


@needs_schemas
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_every_trainjob_validates_against_the_v2_3_crd(example: Path) -> None:
    _, jobs = training_children(example, "trainjob")
    assert jobs and {j["kind"] for j in jobs} == {"TrainJob"}
    for job in jobs:
        assert crd_schemas.problems("trainer.kubeflow.org", "trainjobs", job) == []


@needs_schemas
def test_the_crd_check_refuses_what_the_api_server_refuses() -> None:
    _, (job, *_) = training_children(REPO / "examples" / "fusechat3-llama31-8b.yaml", "trainjob")
    bad_type = {**job, "spec": {**job["spec"], "trainer": {**job["spec"]["trainer"], "numNodes": "two"}}}
    unknown = {**job, "spec": {**job["spec"], "elasticPolicy": {}}}
    bad_name = {**job, "metadata": {**job["metadata"], "name": "7-sft"}}
    no_ref = {**job, "spec": {k: v for k, v in job["spec"].items() if k != "runtimeRef"}}
    problems = {
        name: crd_schemas.problems("trainer.kubeflow.org", "trainjobs", obj)
        for name, obj in [("type", bad_type), ("unknown", unknown), ("name", bad_name), ("ref", no_ref)]
    }
    assert any("numNodes" in p for p in problems["type"]), problems
    assert any("elasticPolicy" in p for p in problems["unknown"]), problems
    assert any("RFC 1035" in p for p in problems["name"]), problems
    assert any("runtimeRef" in p for p in problems["ref"]), problems


def test_trainjob_carries_the_run_settings() -> None:
    ctx, (sft, dpo) = training_children(REPO / "examples" / "fusechat3-llama31-8b.yaml", "trainjob")
    assert [sft["metadata"]["name"], dpo["metadata"]["name"]] == [
        "fusechat3-llama31-8b-sft",
        "fusechat3-llama31-8b-dpo",
    ]
    spec = sft["spec"]
    assert spec["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "kubefusion-torch",
    }
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": 8}
    assert trainer["command"] == torchrun_command(
        ctx, next(t for t in plan_tasks(ctx.spec) if t.name == "sft")
    )
    env = {e["name"]: e for e in trainer["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"
    pod = node_pod(sft)
    assert pod["metadata"]["labels"]["kubefusion.dev/run"] == ctx.name
    assert pod["metadata"]["labels"]["kubefusion.dev/task"] == "sft"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "dshm" not in volumes  # the runtime mounts /dev/shm (a second volume of that name is invalid)
    assert volumes["run-config"]["configMap"]["name"] == f"{ctx.name}-config"
    (node,) = pod["spec"]["containers"]
    assert node["name"] == "node"
    assert {m["mountPath"] for m in node["volumeMounts"]} >= {"/etc/kubefusion"}
    assert "env" not in node  # the trainer container's env goes through spec.trainer.env only


def test_trainjob_queue_suspend_and_a_named_runtime() -> None:
    runtime = TrainingRuntimeRef(name="team-torch", kind="TrainingRuntime")
    run = load_fusionrun(REPO / "examples" / "quickstart.yaml")
    training = run.spec.training.model_copy(update={"runtime": runtime})
    spec = run.spec.model_copy(update={"queue_name": "gpu-queue", "training": training})
    ctx = RenderContext(run.name, "ns", "uid", spec, training_backend="trainjob")
    sft = next(t for t in plan_tasks(spec) if t.name == "sft")
    (job,) = build_task_children(ctx, sft, suspended=True)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["suspend"] is True
    assert job["spec"]["runtimeRef"]["name"] == "team-torch"
    assert job["spec"]["runtimeRef"]["kind"] == "TrainingRuntime"


def test_storage_secret_becomes_a_mounted_env_dir() -> None:
    run = load_fusionrun(REPO / "examples" / "quickstart.yaml")
    spec = run.spec.model_copy(
        update={"credentials": run.spec.credentials.model_copy(update={"storage_secret": "s3-creds"})}
    )
    ctx = RenderContext(run.name, "ns", "uid", spec, training_backend="trainjob")
    (job,) = build_task_children(ctx, next(t for t in plan_tasks(spec) if t.name == "sft"))
    pod = node_pod(job)
    secret = next(v for v in pod["spec"]["volumes"] if "secret" in v)
    assert secret["secret"] == {"secretName": "s3-creds"}
    (mount,) = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == secret["name"]]
    env = {e["name"]: e.get("value") for e in job["spec"]["trainer"]["env"]}
    assert env[ENV_DIR_VARIABLE] == mount["mountPath"]
    if crd_schemas.schemas_available():
        assert crd_schemas.problems("trainer.kubeflow.org", "trainjobs", job) == []


def test_a_pod_field_a_runtime_patch_cannot_carry_is_an_error() -> None:
    pod = {"metadata": {}, "spec": {"hostNetwork": True, "containers": [{"name": "node"}]}}
    with pytest.raises(ValueError, match="hostNetwork"):
        runtime_patch(pod)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_both_backends_run_one_command_without_address_flags(example: Path) -> None:
    _, trainjobs = training_children(example, "trainjob")
    _, pytorchjobs = training_children(example, "pytorchjob")
    for trainjob, pytorchjob in zip(trainjobs, pytorchjobs, strict=True):
        master = pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
        assert trainjob["spec"]["trainer"]["command"] == master["command"]
        command = master["command"]
        assert command[:2] == ["torchrun", "-m"]
        assert not [a for a in command if a.startswith(("--master", "--nnodes", "--node-rank", "--nproc"))]


def test_pytorchjob_fails_as_a_group_and_frees_its_pods() -> None:
    _, (sft, _dpo) = training_children(REPO / "examples" / "fusechat3-llama31-8b.yaml", "pytorchjob")
    run_policy = sft["spec"]["runPolicy"]
    assert run_policy["cleanPodPolicy"] == "Running"  # a finished job keeps no pod (and no GPU)
    replicas = sft["spec"]["pytorchReplicaSpecs"]
    # no per-pod restarts: a failed rank fails the job instead of waiting for peers stuck in NCCL
    assert {r["restartPolicy"] for r in replicas.values()} == {"Never"}
    for replica in replicas.values():
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
        kubernetes_validate.validate({**template, "template": replica["template"]}, "1.31", strict=True)


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("auto", "TrainJob, or a PyTorchJob"),
        ("trainjob", "TrainJob (Kubeflow Trainer v2)"),
        ("pytorchjob", "PyTorchJob (training operator v1)"),
    ],
)
def test_plan_names_the_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], backend: str, expected: str
) -> None:
    import yaml

    from kubefusion_operator.cli import main

    doc = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    doc["spec"]["training"]["backend"] = backend
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["plan", "-f", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"training backend: {backend}" in out
    sft = out[out.index(" sft ") :]
    assert f"creates: {expected}" in sft


def test_node_selection_and_security_of_the_training_pod_reach_the_runtime_patch() -> None:
    """Whatever the shared training pod sets for scheduling or security (render/training.trainer_pod, where
    pod hardening and node selection apply to both backends) goes into the TrainJob's patch."""
    pod = {
        "metadata": {"labels": {"a": "b"}},
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": "H100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {}},
            "securityContext": {"runAsNonRoot": True},
            "volumes": [],
            "containers": [
                {"name": "node", "securityContext": {"allowPrivilegeEscalation": False}, "env": []}
            ],
        },
    }
    patch, _env = runtime_patch(pod)
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    spec = job["template"]["spec"]["template"]["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "securityContext"):
        assert spec[key] == pod["spec"][key]
    assert spec["containers"][0]["securityContext"] == {"allowPrivilegeEscalation": False}
