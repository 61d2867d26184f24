"""Pod pieces every child shares: the run's storage and config, secrets by reference, /dev/shm."""

from __future__ import annotations

from typing import Any

from kubefusion_operator.render.names import METRICS_PORT, RenderContext, config_map_name


def volumes(ctx: RenderContext, *, shm: bool = False) -> list[dict[str, Any]]:
    vols: list[dict[str, Any]] = [{"name": "run-config", "configMap": {"name": config_map_name(ctx.name)}}]
    if ctx.spec.storage.pvc:
        vols.append({"name": "storage", "persistentVolumeClaim": {"claimName": ctx.spec.storage.pvc}})
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
    if shm:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return mounts


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


def metrics_port() -> dict[str, Any]:
    return {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}


def pod_annotations() -> dict[str, str]:
    # The operator scrapes kubefusion_progress_* from this port; Prometheus can too.
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)}
