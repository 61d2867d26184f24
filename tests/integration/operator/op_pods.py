"""Play a Job's pods on this machine the way a kubelet would, for tests that need the pods' real work done.

    player = PodPlayer(emulator, "ns1", pvc_root=tmp_path / "pvc", work=tmp_path / "pods")
    player.run_job(job)   # every completion index: init containers, then containers, in order

Each container runs as a local process: `kubefusion stage ...` becomes `python -m kubefusion_trainer.cli ...`.
Volumes become folders: a PVC is `pvc_root` (subPath / subPathExpr resolved like the kubelet does,
$(VAR) from the container's env), an emptyDir a fresh folder per pod, a ConfigMap its data from the
emulator. Mount paths in the command, the env and ConfigMap files are rewritten to those folders (the one
liberty taken: no mount namespace here). `--metrics-port N` is dropped (one fixed port per process would
clash). Containers named in `unprivileged` run as an unprivileged local uid with no capabilities
(`run_as`), under an interpreter that uid can read, after their mounted folders are handed to that uid
(what the pod's one runAsUser/fsGroup gives on a cluster); the others run as the test's own user (here
the project's virtualenv is readable by root only).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import REPO_ROOT

INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


class PodFailed(AssertionError):
    pass


class PodPlayer:
    def __init__(
        self,
        emulator: Any,
        namespace: str,
        pvc_root: Path,
        work: Path,
        run_as: tuple[list[str], int | None, str] | None = None,
        unprivileged: frozenset[str] = frozenset(),
    ) -> None:
        self.emu = emulator
        self.ns = namespace
        self.pvc_root = pvc_root
        self.work = work
        self.run_as = run_as  # (command prefix, uid, python) for the `unprivileged` containers
        self.unprivileged = unprivileged
        self.log: list[str] = []

    def run_job(self, job: dict[str, Any]) -> None:
        spec = job["spec"]
        indexed = spec.get("completionMode") == "Indexed"
        for index in range(spec.get("completions", 1)):
            self.run_pod(job["metadata"]["name"], spec["template"], index if indexed else None)

    def run_pod(self, job_name: str, template: dict[str, Any], index: int | None) -> None:
        pod = template["spec"]
        pod_dir = self.work / f"{job_name}-{index if index is not None else 0}"
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            env = self._env(container, index)
            mounts = self._mounts(container, volumes, env, pod_dir)
            command = [_expand(self._rewrite(part, mounts), env) for part in container["command"]]
            command = _drop_metrics_port(command)
            drop = container["name"] in self.unprivileged and self.run_as is not None
            if drop and self.run_as[1] is not None:
                for path in mounts.values():
                    _chown_tree(path, self.run_as[1])
            self._run(f"{job_name}[{index}]/{container['name']}", command, env, mounts, drop)

    def _env(self, container: dict[str, Any], index: int | None) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            elif INDEX_ANNOTATION in str(item.get("valueFrom")):
                env[item["name"]] = str(index)
            elif "resourceFieldRef" in item.get("valueFrom", {}):
                env[item["name"]] = _resource_field(container, item["valueFrom"]["resourceFieldRef"])
            else:
                raise AssertionError(f"the player cannot resolve env {item}")
        return env

    def _mounts(self, container: dict, volumes: dict, env: dict[str, str], pod_dir: Path) -> dict[str, Path]:
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                sub = mount.get("subPath") or _expand(mount.get("subPathExpr", ""), env)
                local = self.pvc_root / sub
                local.mkdir(parents=True, exist_ok=True)  # the kubelet creates a missing subPath too
            elif "emptyDir" in volume:
                local = pod_dir / "volumes" / mount["name"]
                local.mkdir(parents=True, exist_ok=True)
            elif "configMap" in volume:
                local = pod_dir / "configmaps" / container["name"] / mount["name"]
                local.mkdir(parents=True, exist_ok=True)
                mounts[mount["mountPath"]] = local
                data = self.emu.find("v1/configmaps", self.ns, volume["configMap"]["name"])["data"]
                for key, text in data.items():
                    (local / key).write_text(self._rewrite_text(text, container, volumes, env))
                continue
            else:
                raise AssertionError(f"the player cannot mount volume {volume}")
            mounts[mount["mountPath"]] = local
        return mounts

    def _rewrite_text(self, text: str, container: dict, volumes: dict, env: dict) -> str:
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                sub = mount.get("subPath") or _expand(mount.get("subPathExpr", ""), env)
                text = text.replace(mount["mountPath"], str(self.pvc_root / sub))
        return text

    def _rewrite(self, value: str, mounts: dict[str, Path]) -> str:
        for path in sorted(mounts, key=len, reverse=True):
            if value == path or value.startswith(path + "/"):
                return str(mounts[path]) + value[len(path) :]
        return value

    def _run(
        self, what: str, command: list[str], env: dict[str, str], mounts: dict[str, Path], drop: bool
    ) -> None:
        if command[:2] != ["kubefusion", "stage"]:
            raise AssertionError(f"{what}: the player runs only `kubefusion stage` commands, not {command}")
        env = {k: self._rewrite(v, mounts) for k, v in env.items()}
        prefix, python = [], sys.executable
        if drop and self.run_as is not None:
            prefix, _, python = self.run_as
        full_env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "operator"), str(REPO_ROOT / "trainer")]),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            **({} if prefix else {"HOME": os.environ.get("HOME", "/tmp")}),
            **env,
        }
        local = [*prefix, python, "-m", "kubefusion_trainer.cli", *command[2:]]
        done = subprocess.run(local, env=full_env, capture_output=True, text=True, timeout=600, cwd="/")
        self.log.append(f"{what}: exit {done.returncode}\n{done.stderr[-2000:]}")
        if done.returncode != 0:
            raise PodFailed(f"{what} failed ({done.returncode}): {done.stderr[-3000:]}")


def _chown_tree(root: Path, uid: int) -> None:
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, uid, follow_symlinks=False)


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), value)


def _drop_metrics_port(command: list[str]) -> list[str]:
    out, skip = [], False
    for part in command:
        if skip:
            skip = False
        elif part == "--metrics-port":
            skip = True
        else:
            out.append(part)
    return out


def _resource_field(container: dict[str, Any], ref: dict[str, Any]) -> str:
    """What the kubelet puts in a resourceFieldRef env var for CPU: the quantity over the divisor, rounded up."""
    kind, resource = ref["resource"].split(".", 1)
    if resource != "cpu" or ref.get("containerName", container["name"]) != container["name"]:
        raise AssertionError(f"the player resolves only its own container's cpu, not {ref}")
    value = str(container["resources"][kind]["cpu"])
    cores = int(value[:-1]) / 1000 if value.endswith("m") else float(value)
    divisor = str(ref.get("divisor", "1"))
    unit = int(divisor[:-1]) / 1000 if divisor.endswith("m") else float(divisor)
    return str(math.ceil(cores / unit))
