"""At paper scale on the emulator: the paper example's sampling shards share each server's batch, and its
score stage runs as an Indexed Job of scoring.shards pods (the real kopf operator creates them)."""
# ruff: noqa: F811

from __future__ import annotations

import pytest
from op_cluster import JOBS, create_run, drive_to_end, example, operator_running
from op_emulator import emulator  # noqa: F401

pytestmark = pytest.mark.integration


def container(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


async def test_paper_example_scores_as_an_indexed_job_and_samplers_share_the_batch(
    emulator, tmp_path
) -> None:
    doc = example("fusechat3-llama31-8b")
    name = doc["metadata"]["name"]
    shards = doc["spec"]["scoring"]["shards"]
    assert shards > 1  # the example scales scoring out
    seen: dict[str, dict] = {}

    async def capture(_moved: list[str]) -> None:
        for job in emulator.live(JOBS, "ns1"):
            seen.setdefault(job["metadata"]["name"], job)

    async with operator_running(emulator, tmp_path):
        await create_run(emulator, doc)
        await drive_to_end(emulator, name, timeout=60, on_step=capture)

    score = seen[f"{name}-score"]
    spec = score["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == shards
    command = container(score)["command"]
    assert command[command.index("--shard") + 1] == f"$(JOB_COMPLETION_INDEX)/{shards}"
    assert command[command.index("--concurrency") + 1] == "$(CPU_REQUEST)"
    env = {e["name"]: e["valueFrom"] for e in container(score)["env"] if "valueFrom" in e}
    assert env["CPU_REQUEST"]["resourceFieldRef"]["resource"] == "requests.cpu"
    assert "job-completion-index" in env["JOB_COMPLETION_INDEX"]["fieldRef"]["fieldPath"]
    resources = container(score)["resources"]
    assert resources["requests"]["cpu"] == str(doc["spec"]["scoring"]["cpus"])
    assert resources["limits"]["nvidia.com/gpu"] == doc["spec"]["scoring"]["rewardModel"]["gpus"]

    # every source's sampling Job: 4 shards per replica, each taking a quarter of 256 answers plus headroom
    samplers = [job for job_name, job in seen.items() if job_name.endswith("-sample")]
    assert len(samplers) == len(doc["spec"]["sources"])
    for job in samplers:
        command = container(job)["command"]
        assert job["spec"]["completions"] == 4
        assert command[command.index("--max-in-flight") + 1] == "80"  # ceil(256 x 1.25 / 4)
