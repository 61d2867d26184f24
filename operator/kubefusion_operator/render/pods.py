"""Pod pieces every child shares, for every backend: storage, config, caches, secrets by reference, the
`restricted` security context and spec.scheduling.

A backend builds its containers, then calls `pod_spec(...)` for the pod template's spec and
`template_metadata(...)` for its metadata; `container(...)` adds what every container needs (security
context, cache environment, ephemeral-storage request). Nothing here may make a pod break the Pod
Security `restricted` profile: tests/unit/operator/test_op_pod_templates.py checks every template.
"""

from __future__ import annotations

from typing import Any

from kubefusion_operator.api_pods import PodSecurity, Scheduling
from kubefusion_operator.model_table import model_size
from kubefusion_operator.planner import Task, TaskKind
from kubefusion_operator.render.names import METRICS_PORT, QUEUE_LABEL, RenderContext, config_map_name

DEFAULT_UID = 65532  # USER of images/trainer.Dockerfile; vLLM's image would run as root
TMP_MOUNT = "/tmp"
MODEL_CACHE_MOUNT = "/var/cache/kubefusion/huggingface"  # HF_HOME of every pod
TMP_SIZE_GI = 8  # scratch (HOME, compile caches, DeepSpeed's JIT ops)
MIN_CACHE_GI = 20
PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"  # Kueue WorkloadPriorityClass

# Every cache a process may write goes to a mounted volume: the root filesystem may belong to another
# uid (the platform's, on OpenShift) and the container's writable layer is neither sized nor shared.
CACHE_ENV = {
    "HOME": TMP_MOUNT,
    "HF_HOME": MODEL_CACHE_MOUNT,
    "XDG_CACHE_HOME": f"{TMP_MOUNT}/.cache",
    "TORCH_EXTENSIONS_DIR": f"{TMP_MOUNT}/torch_extensions",
    "TRITON_CACHE_DIR": f"{TMP_MOUNT}/triton",
    "VLLM_CACHE_ROOT": f"{TMP_MOUNT}/vllm",
    "VLLM_NO_USAGE_STATS": "1",
}


def workload(task: Task) -> str | None:
    """The spec.podSecurity/spec.scheduling override a task's pods take (None: run-wide only)."""
    if task.stage == "evaluate" or task.stage.startswith("serve-candidate"):
        return "evaluation"
    if task.kind == TaskKind.SERVER:
        return "serving"
    if task.kind == TaskKind.TRAIN:
        return "training"
    if task.stage.startswith("sample"):
        return "sampling"
    if task.stage.startswith("score"):
        return "scoring"
    return None  # prepare, build: CPU data processing


# -- volumes --------------------------------------------------------------------------------------


def cache_size_gi(model: str | None, parameters_billions: float | None = None) -> int:
    """Weights in bf16 (2 bytes per parameter) plus 20%, at least MIN_CACHE_GI.

    The size is model_table.model_size's, the figure `kubefusion plan` prints for the same model.
    """
    billions = model_size(model, parameters_billions)[0] if model else parameters_billions
    return max(MIN_CACHE_GI, int((billions or 0) * 2 * 1.2) + 1)


def _cache_volume(ctx: RenderContext, model: str | None, parameters_billions: float | None) -> dict[str, Any]:
    cache = ctx.spec.serving.model_cache
    if cache.pvc:
        return {"name": "model-cache", "persistentVolumeClaim": {"claimName": cache.pvc}}
    size = str(cache.size) if cache.size is not None else f"{cache_size_gi(model, parameters_billions)}Gi"
    if cache.storage_class_name:
        claim = {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": cache.storage_class_name,
            "resources": {"requests": {"storage": size}},
        }
        return {"name": "model-cache", "ephemeral": {"volumeClaimTemplate": {"spec": claim}}}
    return {"name": "model-cache", "emptyDir": {"sizeLimit": size}}


def volumes(
    ctx: RenderContext,
    *,
    shm: bool = False,
    model: str | None = None,
    parameters_billions: float | None = None,
) -> list[dict[str, Any]]:
    """The pod's volumes; `model` and its spec's parametersBillions size the model cache."""
    vols: list[dict[str, Any]] = [{"name": "run-config", "configMap": {"name": config_map_name(ctx.name)}}]
    if ctx.spec.storage.pvc:
        vols.append({"name": "storage", "persistentVolumeClaim": {"claimName": ctx.spec.storage.pvc}})
    vols.append({"name": "tmp", "emptyDir": {"sizeLimit": f"{TMP_SIZE_GI}Gi"}})
    vols.append(_cache_volume(ctx, model, parameters_billions))
    if shm:
        # NCCL and vLLM's workers exchange tensors through /dev/shm; the container default is 64 MiB.
        vols.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    return vols


def volume_mounts(ctx: RenderContext, *, shm: bool = False) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [{"name": "run-config", "mountPath": ctx.config_mount, "readOnly": True}]
    if ctx.spec.storage.pvc:
        mounts.append(
            {
                "name": "storage",
                "mountPath": ctx.storage_mount,
                "subPath": ctx.spec.storage.sub_path or ctx.name,
            }
        )
    mounts.append({"name": "tmp", "mountPath": TMP_MOUNT})
    cache: dict[str, Any] = {"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT}
    if ctx.spec.serving.model_cache.pvc and ctx.spec.serving.model_cache.sub_path:
        cache["subPath"] = ctx.spec.serving.model_cache.sub_path
    mounts.append(cache)
    if shm:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return mounts


def ephemeral_storage(vols: list[dict[str, Any]]) -> str:
    """What the pod's node-local emptyDirs may fill (a request, so the scheduler accounts for it)."""
    gib = 0
    for vol in vols:
        empty = vol.get("emptyDir")
        if empty is not None and empty.get("medium") != "Memory" and empty.get("sizeLimit"):
            gib += _gib(str(empty["sizeLimit"]))
    return f"{gib}Gi"


def _gib(quantity: str) -> int:
    units = {"Ki": 1 / 2**20, "Mi": 1 / 2**10, "Gi": 1, "Ti": 2**10, "k": 1e3 / 2**30, "M": 1e6 / 2**30}
    units |= {"G": 1e9 / 2**30, "T": 1e12 / 2**30}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if quantity.endswith(suffix):
            return max(1, round(float(quantity[: -len(suffix)]) * factor + 0.4999))
    return max(1, round(float(quantity) / 2**30 + 0.4999))


# -- environment ----------------------------------------------------------------------------------


def secret_env(ctx: RenderContext, *, hf_token: bool = True) -> list[dict[str, Any]]:
    """Secrets as references only: the operator never reads their values."""
    env: list[dict[str, Any]] = []
    token = ctx.spec.credentials.hf_token
    if hf_token and token is not None:
        ref = {"secretKeyRef": {"name": token.name, "key": token.key}}
        env += [{"name": "HF_TOKEN", "valueFrom": ref}, {"name": "HUGGING_FACE_HUB_TOKEN", "valueFrom": ref}]
    return env


def env_from(ctx: RenderContext) -> list[dict[str, Any]]:
    if ctx.spec.credentials.storage_secret:
        return [{"secretRef": {"name": ctx.spec.credentials.storage_secret}}]
    return []


def cache_env() -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in CACHE_ENV.items()]


def metrics_port() -> dict[str, Any]:
    return {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}


def pod_annotations() -> dict[str, str]:
    # The operator scrapes kubefusion_progress_* from this port; Prometheus can too.
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)}


# -- security -------------------------------------------------------------------------------------


def container_security_context() -> dict[str, Any]:
    """The container half of the `restricted` profile (the pod half is pod_security_context)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context(ctx: RenderContext, workload_name: str | None) -> dict[str, Any]:
    ids: PodSecurity = ctx.spec.pod_security.for_workload(workload_name)
    out: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if not ids.platform_assigns_ids:
        out["runAsUser"] = ids.run_as_user or DEFAULT_UID
        out["runAsGroup"] = ids.run_as_group if ids.run_as_group is not None else DEFAULT_UID
        out["fsGroup"] = ids.fs_group if ids.fs_group is not None else DEFAULT_UID
        # Only chown a volume whose root does not match already: a recursive walk of a large PVC
        # at every pod start would take hours.
        out["fsGroupChangePolicy"] = "OnRootMismatch"
    if ids.supplemental_groups:
        out["supplementalGroups"] = list(ids.supplemental_groups)
    return out


# -- scheduling -----------------------------------------------------------------------------------


def scheduling(
    ctx: RenderContext,
    workload_name: str | None,
    *,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """nodeSelector, tolerations, affinity and priorityClassName for a pod spec.

    node_selector/tolerations: a source's own serving settings, added to (and winning over) the run's.
    """
    rules: Scheduling = ctx.spec.scheduling.for_workload(workload_name)
    out: dict[str, Any] = {}
    selector = {**(rules.node_selector or {}), **(node_selector or {})}
    if selector:
        out["nodeSelector"] = selector
    tols = [t.model_dump(by_alias=True, exclude_none=True) for t in rules.tolerations or []]
    tols += [t for t in tolerations or [] if t not in tols]
    if tols:
        out["tolerations"] = tols
    if rules.affinity:
        out["affinity"] = rules.affinity
    if rules.priority_class_name:
        out["priorityClassName"] = rules.priority_class_name
    return out


def workload_labels(ctx: RenderContext, workload_name: str | None) -> dict[str, str]:
    """Labels Kueue reads on a workload (Job, training job, Deployment and its pods)."""
    rules = ctx.spec.scheduling.for_workload(workload_name)
    return {PRIORITY_CLASS_LABEL: rules.workload_priority_class} if rules.workload_priority_class else {}


# -- the pod --------------------------------------------------------------------------------------


def container(base: dict[str, Any], vols: list[dict[str, Any]]) -> dict[str, Any]:
    """A container with the restricted security context, cache environment and storage request."""
    out = dict(base)
    names = {e["name"] for e in out.get("env", [])}
    env = [*out.get("env", []), *(e for e in cache_env() if e["name"] not in names)]
    claim = next((v["persistentVolumeClaim"]["claimName"] for v in vols if v["name"] == "storage"), None)
    if claim:  # named in prepare's error when the run folder is not writable
        env.append({"name": "KUBEFUSION_STORAGE_PVC", "value": claim})
    out["env"] = env
    resources = {k: dict(v) for k, v in (out.get("resources") or {}).items()}
    resources.setdefault("requests", {}).setdefault("ephemeral-storage", ephemeral_storage(vols))
    out["resources"] = resources
    out["securityContext"] = container_security_context()
    return out


def pod_spec(
    ctx: RenderContext,
    task: Task,
    containers: list[dict[str, Any]],
    vols: list[dict[str, Any]],
    *,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The spec of a pod template: the containers (see container()), volumes, security and scheduling."""
    name = workload(task)
    return {
        **extra,
        "securityContext": pod_security_context(ctx, name),
        **scheduling(ctx, name, node_selector=node_selector, tolerations=tolerations),
        "containers": [container(c, vols) for c in containers],
        "volumes": vols,
    }


def template_metadata(ctx: RenderContext, task: Task, component: str | None = None) -> dict[str, Any]:
    labels = {**ctx.labels(task, component), **workload_labels(ctx, workload(task))}
    if task.kind == TaskKind.SERVER:
        if ctx.spec.queue_name:
            # Kueue's pod integration admits server pods one by one: the label goes on each pod too.
            labels[QUEUE_LABEL] = ctx.spec.queue_name
        return {"labels": labels}  # vLLM serves its own /metrics on the http port
    return {"labels": labels, "annotations": pod_annotations()}


def workload_metadata(
    ctx: RenderContext, name: str, task: Task, component: str | None = None
) -> dict[str, Any]:
    """A workload's metadata: the run's labels, owner, Kueue queue and priority class."""
    meta = ctx.metadata(name, task, queue=True, component=component)
    meta["labels"].update(workload_labels(ctx, workload(task)))
    return meta
