"""Config models, the storage layout, records and atomic writes."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from foundation_specs import spec_with

from kubefusion_operator.api import FusionRunSpec, immutable_spec_fields
from kubefusion_trainer.atomic import atomic_open, atomic_write_json
from kubefusion_trainer.config import RunConfig, SftConfig, load_run_config
from kubefusion_trainer.layout import RunLayout, shard_name
from kubefusion_trainer.records import assign_split, prompt_id


def test_gradient_accumulation_from_global_batch() -> None:
    sft = SftConfig.model_validate(
        {"globalBatchSize": 128, "microBatchSize": 2, "resources": {"nodes": 2, "gpusPerNode": 8}}
    )
    assert sft.gradient_accumulation_steps() == 4
    cpu = SftConfig.model_validate(
        {"globalBatchSize": 8, "microBatchSize": 2, "resources": {"gpusPerNode": 0}}
    )
    assert cpu.gradient_accumulation_steps() == 4
    bad = SftConfig.model_validate(
        {"globalBatchSize": 100, "microBatchSize": 3, "resources": {"nodes": 1, "gpusPerNode": 8}}
    )
    with pytest.raises(ValueError, match=r"globalBatchSize 100 is not divisible by .* = 24"):
        bad.gradient_accumulation_steps()


def test_run_config_keeps_only_what_stages_need(tmp_path: Path) -> None:
    spec = FusionRunSpec.model_validate(spec_with(("spec.queueName", "q"), ("spec.suspend", True))["spec"])
    run = spec.to_run_config("demo", "/data/demo", {"alpha": "http://alpha:8000/v1"})
    dumped = run.model_dump(by_alias=True, mode="json")
    assert "serving" not in dumped["spec"]["sources"][0]
    assert not {"queueName", "suspend", "storage", "credentials", "serving"} & set(dumped["spec"])
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(dumped))
    loaded = load_run_config(str(path))
    assert loaded == run
    assert [s.name for s in loaded.spec.dataset_sources(loaded.spec.datasets[1])] == ["alpha"]
    assert RunConfig.model_validate(dumped).endpoints["alpha"].endswith("/v1")


def test_only_suspend_is_mutable() -> None:
    fields = immutable_spec_fields()
    assert "suspend" not in fields
    assert {"recipe", "sources", "datasets", "training", "queueName"} <= set(fields)


def test_layout_paths() -> None:
    layout = RunLayout("/runs/demo")
    assert layout.prompts_file("chat") == Path("/runs/demo/prepared/chat.jsonl")
    assert layout.sample_shard("sources", "alpha", "chat", 2, 8) == Path(
        "/runs/demo/samples/sources/alpha/chat/shard-00002-of-00008.jsonl"
    )
    assert layout.score_shard("target", "target", "chat", 0, 1).parts[-5:] == (
        "scores",
        "target",
        "target",
        "chat",
        "shard-00000-of-00001.jsonl",
    )
    assert layout.dataset_file("dpo", "chat") == Path("/runs/demo/data/dpo/chat.jsonl")
    assert layout.final_model("sft") == Path("/runs/demo/train/sft/final")
    assert layout.deepspeed_config("wrpo") == Path("/runs/demo/train/wrpo/deepspeed.json")
    with pytest.raises(ValueError, match="outside"):
        shard_name(8, 8)


def test_prompt_ids_are_stable_and_content_based() -> None:
    a = prompt_id([{"role": "user", "content": "hi"}])
    assert a == prompt_id([{"role": "user", "content": "hi"}])
    assert a != prompt_id([{"role": "system", "content": "hi"}])
    assert a != prompt_id([{"role": "user", "content": "hi "}])
    assert len(a) == 16


def test_split_is_deterministic_and_proportional() -> None:
    ids = [prompt_id([{"role": "user", "content": str(i)}]) for i in range(20000)]
    splits = Counter(assign_split(i, 0.4, 0.05) for i in ids)
    assert abs(splits["eval"] / 20000 - 0.05) < 0.01
    assert abs(splits["sft"] / (splits["sft"] + splits["pref"]) - 0.4) < 0.02
    assert [assign_split(i, 0.4, 0.05) for i in ids[:50]] == [assign_split(i, 0.4, 0.05) for i in ids[:50]]
    assert {assign_split(i, 1.0) for i in ids[:500]} == {"sft"}
    assert {assign_split(i, 0.0) for i in ids[:500]} == {"pref"}


def test_atomic_write_leaves_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out" / "stats.json"
    atomic_write_json(target, {"rows": 1})
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write('{"rows": 2')
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"rows": 1}
    assert os.listdir(target.parent) == ["stats.json"]  # no temp file left behind


def test_api_and_config_imports_stay_light() -> None:
    import subprocess
    import sys

    from conftest import subprocess_env

    code = (
        "import sys, kubefusion_operator.api, kubefusion_operator.cli, kubefusion_trainer.config, "
        "kubefusion_trainer.layout, kubefusion_trainer.records\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'transformers', 'trl', 'kopf', 'kubernetes', 'deepspeed', 'datasets'})\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), check=True
    )
    assert out.stdout.strip() == ""
    trainer_imports = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, kubefusion_trainer.config; print('kubefusion_operator' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        check=True,
    )
    assert trainer_imports.stdout.strip() == "False"
