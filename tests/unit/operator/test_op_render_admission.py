"""Sampling shards share what a server replica runs; score pods are sized and sharded from the spec."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from kubefusion_operator.planner import plan_tasks
from kubefusion_operator.render.admission import max_num_seqs_arg, replica_max_in_flight, shard_max_in_flight
from kubefusion_operator.render.names import RenderContext
from kubefusion_operator.render.task import build_task_children
from kubefusion_operator.validation import InvalidFusionRun, load_fusionrun, validate_document

REPO = Path(__file__).resolve().parents[3]


def children_of(doc: dict) -> list[dict]:
    run = validate_document(doc)
    ctx = RenderContext(run.name, "team-a", "0b6e1c1e-0000-4000-8000-000000000001", run.spec)
    objs = [o for task in plan_tasks(run.spec) for o in build_task_children(ctx, task)]
    for obj in objs:
        if obj["kind"] in ("Job", "Deployment", "Service"):  # PyTorchJob: test_op_render checks its CRD
            kubernetes_validate.validate(obj, "1.31", strict=True)
    return objs


def paper(**serving: object) -> dict:
    doc = yaml.safe_load((REPO / "examples" / "fusechat3-llama31-8b.yaml").read_text())
    doc["spec"]["sources"][0]["serving"].update(serving)
    return doc


def container(objs: list[dict], suffix: str) -> dict:
    obj = next(o for o in objs if o["metadata"]["name"].endswith(suffix) and o["kind"] != "Service")
    spec = obj["spec"]["template"]["spec"]
    return spec["containers"][0]


def flag(values: list[str], name: str) -> str:
    assert values.count(name) == 1, f"{name} appears {values.count(name)} times in {values}"
    return values[values.index(name) + 1]


def test_max_num_seqs_is_read_from_extra_args_in_both_spellings() -> None:
    assert max_num_seqs_arg(["--max-num-seqs", "64"]) == 64
    assert max_num_seqs_arg(["--foo", "--max-num-seqs=96"]) == 96
    assert max_num_seqs_arg(["--max-num-seqs", "lots"]) is None
    assert max_num_seqs_arg([]) is None


@pytest.mark.parametrize(
    ("serving", "server_seqs", "shard_share"),
    [
        ({}, "256", "80"),  # vLLM's default batch, rendered explicitly; ceil(256 x 1.25 / 4)
        ({"maxInFlight": 128}, "128", "40"),
        ({"extraArgs": ["--max-num-seqs=64"]}, None, "20"),  # the user's flag is kept, not repeated
        ({"replicas": 2}, "256", "80"),  # 8 shards share 2 replicas
    ],
)
def test_sampling_shards_share_the_server_batch(
    serving: dict, server_seqs: str | None, shard_share: str
) -> None:
    objs = children_of(paper(**serving))
    vllm = container(objs, "gemma-2-27b-serve")["args"]
    if server_seqs is None:
        assert "--max-num-seqs" not in vllm and "--max-num-seqs=64" in vllm
    else:
        assert flag(vllm, "--max-num-seqs") == server_seqs
    sampler = container(objs, "gemma-2-27b-sample")["command"]
    assert flag(sampler, "--max-in-flight") == shard_share


def test_shares_add_up_to_the_replicas_batch_plus_headroom() -> None:
    run = load_fusionrun(REPO / "examples" / "fusechat3-llama31-8b.yaml")
    serving = run.spec.sources[0].serving
    for shards in (1, 3, 4, 7):
        share = shard_max_in_flight(serving, shards)
        total = replica_max_in_flight(serving) * serving.replicas
        assert total <= share * shards <= total * 1.25 + shards


def test_score_job_is_indexed_and_sized_from_scoring_settings() -> None:
    doc = paper()
    doc["spec"]["scoring"].update(shards=3, cpus=6)
    objs = children_of(doc)
    job = next(o for o in objs if o["metadata"]["name"].endswith("-score"))
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 3
    stage = container(objs, "-score")
    assert flag(stage["command"], "--shard") == "$(JOB_COMPLETION_INDEX)/3"
    assert flag(stage["command"], "--concurrency") == "$(CPU_REQUEST)"
    assert stage["resources"]["requests"]["cpu"] == "6"
    doc["spec"]["scoring"].update(shards=1)
    single = next(o for o in children_of(doc) if o["metadata"]["name"].endswith("-score"))
    assert (
        "completionMode" not in single["spec"]
        and "--shard" not in single["spec"]["template"]["spec"]["containers"][0]["command"]
    )


def test_bad_scale_settings_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidFusionRun, match="maxInFlight"):
        validate_document(paper(maxInFlight=0))
    doc = paper()
    doc["spec"]["scoring"]["shards"] = 0
    with pytest.raises(InvalidFusionRun, match="shards"):
        validate_document(doc)
