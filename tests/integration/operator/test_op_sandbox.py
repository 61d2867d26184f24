"""A code dataset through score on the emulator: the operator's sandbox pods give the local path's verdicts.

The real kopf operator reconciles a FusionRun with a code dataset. The test plays the cluster: servers get
ready, prepare/sample Jobs complete (their outputs are written beforehand), and the verify-code and score
Jobs' pods really run (op_pods.PodPlayer): the sandbox container as an unprivileged uid with no
capabilities, from exactly the inputs its init container staged. The verdicts in the score shards must
equal those of scoring the same answers locally (`stage score`, code run in-process), answer by answer.
"""
# ruff: noqa: F811

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from op_cluster import JOBS, Cluster, condition, create_run, example, operator_running, run_status, wait_for
from op_emulator import emulator  # noqa: F401
from op_pods import PodPlayer

from conftest import unprivileged_prefix
from kubefusion_operator.api import FusionRun
from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.records import prompt_id
from kubefusion_trainer.scoring.code_sandbox import sandbox_python
from kubefusion_trainer.stages import score as score_stage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POLICIES = "networking.k8s.io/v1/networkpolicies"
NAME = "coderun"
TESTS = {
    "add": "assert add(1, 2) == 3\nassert add(0, 5) == 5",
    "sum": [{"input": "2 3\n", "output": "5\n"}, {"input": "10 -4", "output": "6"}],
}
ANSWERS = {
    "add": [
        "```python\ndef add(a, b):\n    return a + b\n```",
        "```python\ndef add(a, b):\n    return a - b\n```",
        "```python\nimport os\nos._exit(0)\n```",
        "```python\nwhile True:\n    pass\n```",
        "I would use a loop.",
        "```python\nimport socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)\n```",
    ],
    "sum": [
        "```python\nimport sys\nprint(sum(map(int, sys.stdin.read().split())))\n```",
        "```python\nprint(5)\n```",
        "```python\nimport glob\nprint(len(glob.glob('/proc/*/environ')))\n```",
    ],
}


def write_run_data(root: Path, sources: list[str]) -> None:
    """What prepare and sample would have written: the prompts with their tests, and every source's answers."""
    layout = RunLayout(root)
    prompts = {}
    for key, tests in TESTS.items():
        messages = [{"role": "user", "content": f"write {key}"}]
        prompts[key] = {
            "prompt_id": prompt_id(messages),
            "dataset": "leet",
            "domain": "code",
            "messages": messages,
            "gold_answer": None,
            "tests": tests,
            "split": "pref",
            "row_index": 0,
        }
    layout.prompts_file("leet").parent.mkdir(parents=True)
    layout.prompts_file("leet").write_text("".join(json.dumps(p) + "\n" for p in prompts.values()))
    for source in sources:
        rows = [
            {**{k: prompts[key][k] for k in ("prompt_id", "dataset", "domain", "messages")}, "source": source}
            | {"sample_index": i, "answer": text, "finish_reason": "stop"}
            for key, answers in ANSWERS.items()
            for i, text in enumerate(answers)
        ]
        folder = layout.samples_dir("sources", source, "leet")
        folder.mkdir(parents=True)
        for index in range(2):
            (folder / f"shard-{index:05d}-of-00002.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows[index::2])
            )


def verdicts(root: Path) -> dict[str, tuple[bool | None, str]]:
    found = {}
    for path in sorted((root / "scores").rglob("shard-*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            key = f"{row['source']}/{row['prompt_id']}/{row['sample_index']}"
            assert key not in found, f"{key} scored twice"
            found[key] = (row["correct"], row["reason"].split(";")[0])
    return found


def local_score(doc: dict, root: Path, tmp: Path) -> None:
    """The local path: `stage score` on this machine, code run by its own sandbox."""
    run = FusionRun.model_validate(doc)
    config = run.spec.to_run_config(NAME, str(root))
    path = tmp / "local-run.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
    args = argparse.Namespace(
        config=str(path),
        phase="sources",
        shard=(0, 1),
        device="cpu",
        concurrency=2,
        metrics_port=None,
        sandbox_verdicts=False,
    )
    score_stage.run(args)


async def test_code_dataset_scores_the_same_in_sandbox_pods_as_locally(
    emulator, tmp_path, tiny_world
) -> None:
    doc = example(
        "quickstart",
        storage={"pvc": "runs"},
        datasets=[
            {
                "name": "leet",
                "location": "demo/data/leet.jsonl",
                "domain": "code",
                "fields": {"prompt": "prompt", "tests": "tests"},
                "samplesPerSource": 6,
                "sftFraction": 0.5,
            }
        ],
    )
    doc["metadata"]["name"] = NAME
    doc["spec"]["scoring"]["rewardModel"]["model"] = str(tiny_world["reward"])
    doc["spec"]["scoring"]["codeExecution"] = {"timeoutSeconds": 2, "memoryMb": 256, "sandboxPods": 2}
    # Folders the unprivileged uid can reach (pytest's own tmp_path is private to root).
    shared = Path(tempfile.mkdtemp(prefix="kf-op-sandbox-"))
    shared.chmod(0o755)
    try:
        await _run_and_compare(emulator, tmp_path, doc, shared)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


async def _run_and_compare(emulator, tmp_path: Path, doc: dict, shared: Path) -> None:
    sources = [s["name"] for s in doc["spec"]["sources"]]
    pvc = shared / "pvc"
    write_run_data(pvc / NAME, sources)
    local_root = tmp_path / "local"
    shutil.copytree(pvc / NAME, local_root)

    drop, uid = unprivileged_prefix()
    player = PodPlayer(
        emulator,
        "ns1",
        pvc_root=pvc,
        work=shared / "pods",
        run_as=(drop, uid, sandbox_python(needs_world_readable=True)),
        unprivileged=frozenset({"sandbox"}),
    )
    cluster = Cluster(emulator)
    played: list[str] = []
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, doc)
        deadline = asyncio.get_running_loop().time() + 300
        while condition(emulator, "ns1", NAME, "Succeeded") != "True":
            assert condition(emulator, "ns1", NAME, "Failed") != "True", run_status(emulator, "ns1", NAME)
            assert asyncio.get_running_loop().time() < deadline, run_status(emulator, "ns1", NAME)
            for job in emulator.live(JOBS, "ns1"):
                name = job["metadata"]["name"]
                if (job.get("status") or {}).get("conditions") or job["spec"].get("suspend"):
                    continue
                if name in (f"{NAME}-verify-code", f"{NAME}-score"):
                    if name.endswith("verify-code"):
                        policy = emulator.find(POLICIES, "ns1", name)
                        assert policy is not None, "sandbox pods started without their NetworkPolicy"
                    await asyncio.to_thread(player.run_job, job)
                    played.append(name)
                await cluster.complete(name)
            await cluster.advance()  # servers ready, training done
            await asyncio.sleep(0.05)
        assert played == [f"{NAME}-verify-code", f"{NAME}-score"]
        resp = await emulator.delete(f"/apis/kubefusion.dev/v1alpha1/namespaces/ns1/fusionruns/{NAME}")
        assert resp.status in (200, 202)
        await wait_for(
            lambda: not emulator.live(POLICIES, "ns1"), what="the NetworkPolicy to go with the run"
        )

    on_cluster = verdicts(pvc / NAME)
    record = json.loads((pvc / NAME / "state" / "score-sources.json").read_text())
    assert record["sandbox_verdicts_merged"] == 2 * 8  # every runnable answer of both sources, once
    assert record["sandbox_isolation"].startswith("process:")
    await asyncio.to_thread(local_score, doc, local_root, tmp_path)
    assert on_cluster == verdicts(local_root)
    assert len(on_cluster) == 2 * sum(len(a) for a in ANSWERS.values())
    assert sum(1 for correct, _ in on_cluster.values() if correct) == 2 * 2  # the honest add and sum
