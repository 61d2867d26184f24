"""Full runs: the real kopf operator drives FusionRuns to Succeeded against the emulator."""
# ruff: noqa: F811

from __future__ import annotations

import pytest
from op_cluster import (
    DEPLOYMENTS,
    JOBS,
    RUNS,
    SERVICES,
    Cluster,
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

CHILD_PLURALS = ("deployments", "services", "jobs", "pytorchjobs")


def child_timeline(emulator) -> list[tuple[str, str]]:
    """(ADDED|DELETED, name) of children, in the order watchers saw them."""
    return [(t, n) for t, plural, n in emulator.timeline if plural in CHILD_PLURALS and t != "MODIFIED"]


def added(timeline: list[tuple[str, str]]) -> list[str]:
    return [n for t, n in timeline if t == "ADDED"]


async def test_fusechat3_run_succeeds_in_order(emulator, tmp_path) -> None:
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart"))
        await wait_for(
            lambda: condition(emulator, "ns1", "quickstart", "Progressing") == "True", what="Progressing"
        )
        await drive_to_end(emulator, "quickstart")
    status = run_status(emulator, "ns1", "quickstart")
    assert condition(emulator, "ns1", "quickstart", "Succeeded") == "True", status
    assert condition(emulator, "ns1", "quickstart", "Ready") == "True"
    assert status["observedGeneration"] == 1 and status["stage"] == "done"
    assert [s["name"] for s in status["stages"]] == [
        "prepare",
        "serve-sources",
        "sample",
        "score",
        "build",
        "sft",
        "dpo",
        "evaluate",
    ]
    assert all(s["state"] == "Succeeded" and s["startTime"] and s["endTime"] for s in status["stages"])
    assert status["stages"][0]["outputs"] == [
        "/mnt/kubefusion/prepared/addition.jsonl",
        "/mnt/kubefusion/prepared/reversal.jsonl",
    ]
    timeline = child_timeline(emulator)
    q = "quickstart-"
    assert added(timeline) == [
        f"{q}prepare",
        f"{q}adder-serve",
        f"{q}adder-serve",
        f"{q}reverser-serve",
        f"{q}reverser-serve",
        f"{q}adder-sample",
        f"{q}reverser-sample",
        f"{q}score",
        f"{q}build",
        f"{q}sft",
        f"{q}dpo",
        *(f"{q}eval-{c}" for c in ("original", "original", "sft", "sft", "dpo", "dpo")),
        f"{q}evaluate",
    ]
    # Each source's server is deleted after its sampling, before scoring starts.
    for source in ("adder", "reverser"):
        gone = timeline.index(("DELETED", f"{q}{source}-serve"))
        assert (
            timeline.index(("ADDED", f"{q}{source}-sample")) < gone < timeline.index(("ADDED", f"{q}score"))
        )
    assert children(emulator, DEPLOYMENTS) == [] and children(emulator, SERVICES) == []
    assert not emulator.find(RUNS, "ns1", "quickstart")["metadata"].get("finalizers")
    config = emulator.find("v1/configmaps", "ns1", "quickstart-config")
    assert "adder: http://quickstart-adder-serve.ns1.svc:8000/v1" in config["data"]["run.yaml"]


async def test_wrpo_run_bounds_gpu_use(emulator, tmp_path) -> None:
    """maxConcurrentSources 2 of 4 sources; GPU stages never overlap; the SFT target is served, then WRPO."""
    doc = example("wrpo-llama3-8b")
    name = doc["metadata"]["name"]
    peak_servers = 0
    gpu_overlap: list[str] = []

    async def check(_moved: list[str]) -> None:
        nonlocal peak_servers
        servers = children(emulator, DEPLOYMENTS)
        peak_servers = max(peak_servers, len(servers))
        jobs = children(emulator, JOBS)
        scoring = [j for j in jobs if j.endswith("score") or j.endswith("score-target")]
        live_scoring = [
            j for j in scoring if not (emulator.find(JOBS, "ns1", j).get("status") or {}).get("conditions")
        ]
        if servers and live_scoring:
            gpu_overlap.append(f"{servers} with {live_scoring}")

    async with operator_running(emulator, tmp_path):
        await create_run(emulator, doc)
        await drive_to_end(emulator, name, on_step=check)
    assert condition(emulator, "ns1", name, "Succeeded") == "True", run_status(emulator, "ns1", name)
    assert peak_servers == 2
    assert gpu_overlap == []
    order = added(child_timeline(emulator))
    p = f"{name}-"
    tail = [
        n
        for n in order
        if n
        in {
            f"{p}sft",
            f"{p}serve-target",
            f"{p}sample-target",
            f"{p}score-target",
            f"{p}build-wrpo",
            f"{p}wrpo",
        }
    ]
    assert tail == [
        f"{p}sft",
        f"{p}serve-target",
        f"{p}serve-target",
        f"{p}sample-target",
        f"{p}score-target",
        f"{p}build-wrpo",
        f"{p}wrpo",
    ]
    assert len([n for n in order if n.endswith("-serve")]) == 8  # 4 Deployments + 4 Services, each once
    assert children(emulator, DEPLOYMENTS) == []


async def test_reapplying_the_same_spec_is_a_no_op(emulator, tmp_path) -> None:
    async with operator_running(emulator, tmp_path):
        created = await create_run(emulator, example("quickstart"))
        await drive_to_end(emulator, "quickstart")
        await wait_for(lambda: run_status(emulator, "ns1", "quickstart").get("stage") == "done")
        before_requests = len(emulator.api_requests)
        before_status = run_status(emulator, "ns1", "quickstart")
        resp = await emulator.patch(
            "/apis/kubefusion.dev/v1alpha1/namespaces/ns1/fusionruns/quickstart",
            json={"spec": created["spec"]},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert resp.status == 200
        await wait_for(lambda: len(emulator.api_requests) > before_requests + 1, what="the operator to look")
        writes_before = [r for r in emulator.api_requests[:before_requests] if r.verb in ("create", "delete")]
        await Cluster(emulator).advance()
    writes = [r for r in emulator.api_requests if r.verb in ("create", "delete") and r.resource != "events"]
    assert writes == [r for r in writes_before if r.resource != "events"]
    assert run_status(emulator, "ns1", "quickstart") == before_status
    assert emulator.find(RUNS, "ns1", "quickstart")["metadata"]["generation"] == 1


async def test_restart_at_every_stage_resumes_without_duplicates(emulator, tmp_path) -> None:
    """Stop the operator after every step the cluster takes; a new operator carries on from there."""
    doc = example("quickstart")
    await create_run(emulator, doc)
    cluster = Cluster(emulator)
    start_times: dict[str, str] = {}
    for _ in range(30):
        async with operator_running(emulator, tmp_path):
            # Let the new operator act on what it finds (a new child, or the final status).
            await wait_for(lambda: run_status(emulator, "ns1", "quickstart").get("observedGeneration"))
            seen = len(emulator.timeline)
            await cluster.advance()
            await wait_for(
                lambda seen=seen: (
                    len(emulator.timeline) > seen
                    or condition(emulator, "ns1", "quickstart", "Succeeded") == "True"
                ),
                what="progress",
            )
            await wait_for(
                lambda seen=seen: (
                    any(t[0] == "ADDED" and t[1] in CHILD_PLURALS for t in emulator.timeline[seen:])
                    or condition(emulator, "ns1", "quickstart", "Succeeded") == "True"
                    or len(emulator.timeline) > seen + 2
                ),
                what="the operator's reaction",
            )
        for stage in run_status(emulator, "ns1", "quickstart")["stages"]:
            if stage.get("startTime"):
                assert start_times.setdefault(stage["name"], stage["startTime"]) == stage["startTime"], (
                    "status lost"
                )
        if condition(emulator, "ns1", "quickstart", "Succeeded") == "True":
            break
    assert condition(emulator, "ns1", "quickstart", "Succeeded") == "True", run_status(
        emulator, "ns1", "quickstart"
    )
    names = added(child_timeline(emulator))
    # Only the Deployment+Service pairs share a name: two sources, three evaluation candidates.
    assert len(names) == len(set(names)) + 5
    # A finished run stays finished: a restarted operator creates nothing.
    before = len(emulator.timeline)
    async with operator_running(emulator, tmp_path):
        await wait_for(lambda: len(emulator.api_requests) > 0)
        await Cluster(emulator).advance()
    assert [t for t in emulator.timeline[before:] if t[0] == "ADDED" and t[1] in CHILD_PLURALS] == []
