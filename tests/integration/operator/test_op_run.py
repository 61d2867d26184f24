"""Full runs: the real kopf operator drives FusionRuns to Succeeded against the emulator."""
# ruff: noqa: F811

from __future__ import annotations

import pytest
from op_cluster import (
    DEPLOYMENTS,
    SERVICES,
    children,
    condition,
    create_run,
    drive_to_end,
    example,
    operator_running,
    run_status,
    wait_for,
)
from op_emulator import emulator  # noqa: F401

pytestmark = pytest.mark.integration


async def test_fusechat3_run_succeeds(emulator, tmp_path) -> None:
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart"))
        await wait_for(
            lambda: condition(emulator, "ns1", "quickstart", "Progressing") == "True", what="Progressing"
        )
        order = await drive_to_end(emulator, "quickstart")
        status = run_status(emulator, "ns1", "quickstart")
    assert condition(emulator, "ns1", "quickstart", "Succeeded") == "True", status
    print(order)
    assert status["observedGeneration"] == 1
    assert all(s["state"] == "Succeeded" for s in status["stages"]), status["stages"]
    assert children(emulator, DEPLOYMENTS) == [] and children(emulator, SERVICES) == []


