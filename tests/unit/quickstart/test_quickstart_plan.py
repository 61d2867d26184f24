"""The local plan and the runner's pure helpers: steps, resume checks, path resolution, summaries."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubefusion_operator.api import FusionRun
from kubefusion_operator.local.plan import local_steps
from kubefusion_operator.local.runner import resolve_local_paths, storage_root, summarize_record
from kubefusion_operator.validation import load_fusionrun
from kubefusion_trainer.atomic import atomic_write_json
from kubefusion_trainer.layout import RunLayout


@pytest.fixture
def quickstart(repo_root: Path) -> FusionRun:
    return load_fusionrun(str(repo_root / "examples" / "quickstart.yaml"))


def _wrpo(run: FusionRun) -> FusionRun:
    data = run.model_dump(by_alias=True, mode="json", exclude_none=True)
    data["spec"]["recipe"] = "wrpo"
    data["spec"]["training"]["wrpo"] = {"alpha": 0.5}
    data["spec"]["training"].pop("dpo", None)
    return FusionRun.model_validate(data)


def test_fusechat_plan_runs_every_stage_in_order_with_one_server_per_source(quickstart: FusionRun) -> None:
    steps = local_steps(quickstart.spec, concurrency=8)
    assert [s.name for s in steps] == [
        "prepare",
        "sample adder",
        "sample reverser",
        "score",
        "build",
        "train sft",
        "train dpo",
        "evaluate",
    ]
    sampling = [s for s in steps if s.serve]
    assert [s.serve for s in sampling] == ["adder", "reverser"]
    assert sampling[0].args == ("sample", "--phase", "sources", "--source", "adder", "--concurrency", "8")
    assert sampling[0].records == ("sample-sources-adder",)
    command = steps[0].command("/py", "/cfg.yaml")
    assert command == ["/py", "-m", "kubefusion_operator", "stage", "prepare", "--config", "/cfg.yaml"]


def test_wrpo_plan_serves_the_sft_target_and_builds_quadruples(quickstart: FusionRun) -> None:
    names = [s.name for s in local_steps(_wrpo(quickstart).spec)]
    assert names[names.index("train sft") + 1 :] == [
        "sample target",
        "score target",
        "build wrpo",
        "train wrpo",
        "evaluate",
    ]
    target = next(s for s in local_steps(_wrpo(quickstart).spec) if s.name == "sample target")
    assert target.serve == "target" and target.records == ("sample-target",)


def test_a_step_is_done_exactly_when_its_completion_record_exists(
    quickstart: FusionRun, tmp_path: Path
) -> None:
    layout = RunLayout(tmp_path)
    steps = local_steps(quickstart.spec)
    assert not any(s.done(layout) for s in steps)
    atomic_write_json(layout.stage_record("sample-sources-adder"), {"answers": 10})
    assert [s.name for s in steps if s.done(layout)] == ["sample adder"]


def test_relative_paths_that_exist_become_absolute_and_hub_ids_stay(
    quickstart: FusionRun, tmp_path: Path
) -> None:
    (tmp_path / "demo" / "models" / "adder").mkdir(parents=True)
    (tmp_path / "demo" / "data").mkdir(parents=True)
    (tmp_path / "demo" / "data" / "addition.jsonl").write_text("{}\n")
    data = quickstart.model_dump(by_alias=True, mode="json", exclude_none=True)
    data["spec"]["sources"][1]["model"] = "org/hub-model"
    spec = resolve_local_paths(FusionRun.model_validate(data).spec, tmp_path)
    assert spec.sources[0].model == str(tmp_path / "demo" / "models" / "adder")
    assert spec.sources[1].model == "org/hub-model"
    assert spec.datasets[0].location == str(tmp_path / "demo" / "data" / "addition.jsonl")
    assert spec.datasets[1].location == "demo/data/reversal.jsonl"  # missing: left for prepare to report
    assert spec.sources[0].serving.gpus == 0  # serving settings survive


def test_storage_root_is_the_local_uri_or_runs_name(quickstart: FusionRun, tmp_path: Path) -> None:
    assert storage_root(quickstart, tmp_path) == tmp_path / "runs" / "quickstart"
    data = quickstart.model_dump(by_alias=True, mode="json", exclude_none=True)
    data["spec"]["storage"] = {}
    assert storage_root(FusionRun.model_validate(data), tmp_path) == tmp_path / "runs" / "quickstart"
    data["spec"]["storage"] = {"uri": "s3://bucket/run"}
    with pytest.raises(ValueError, match=r"spec.storage.uri: 's3://bucket/run' is not a local folder"):
        storage_root(FusionRun.model_validate(data), tmp_path)


def test_record_summary_shows_counts_not_paths() -> None:
    record = {
        "stage": "train-sft",
        "global_step": 12,
        "train_loss": 0.25,
        "final_model": "/x",
        "skipped": False,
        "per_dataset": {"a": 3, "b": 4},
    }
    assert summarize_record(record) == "global_step=12 train_loss=0.25 a=3 b=4"
    sampled = {
        "datasets": {"add": {"prompts": 3, "skipped": 1}, "rev": {"prompts": 4, "skipped": 0}},
        "shard": [0, 1],
        "source": "adder",
    }
    assert summarize_record(sampled) == "prompts=7 skipped=1"


def test_quickstart_example_is_a_valid_fusionrun(repo_root: Path) -> None:
    raw = yaml.safe_load((repo_root / "examples" / "quickstart.yaml").read_text())
    run = FusionRun.model_validate(raw)
    assert run.spec.evaluation is not None
    assert {s.name for s in run.spec.sources} == {"adder", "reverser"}
