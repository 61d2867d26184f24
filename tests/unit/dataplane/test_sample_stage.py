"""`kubefusion stage sample` end to end in-process: planning, shards, phases, stage records, failures."""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from dataplane_sample_helpers import SimServer, serve_in_thread

from kubefusion_trainer.config import RunConfig
from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.shards import complete_shards, iter_folder, read_jsonl
from kubefusion_trainer.stages import prepare, sample


def make_run(root: Path, endpoints: dict[str, str], prompts: int = 30) -> tuple[RunConfig, Path]:
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"what is {i} + 1?"}) + "\n" for i in range(prompts)))
    spec: dict[str, Any] = {
        "recipe": "wrpo",
        "target": {"model": "t", "samplesPerPrompt": 2, "sampling": {"seed": 1}},
        "sources": [
            {"name": "a", "model": "org/a", "sampling": {"seed": 0}},
            {"name": "b", "model": "org/b"},
        ],
        "datasets": [
            {"name": "mix", "location": str(data), "samplesPerSource": 3, "sftFraction": 0.5},
            {"name": "only-a", "location": str(data), "samplesPerSource": 2, "sources": ["a"]},
        ],
        "scoring": {"rewardModel": {"model": "r"}},
        "training": {"wrpo": {"alpha": 0.5}},
        "evaluation": {"heldOutFraction": 0.2},
    }
    run = RunConfig.model_validate(
        {"name": "s", "storageRoot": str(root / "store"), "endpoints": endpoints, "spec": spec}
    )
    prepare.run_prepare(run)
    config = root / "run.yaml"
    config.write_text(run.model_dump_json(by_alias=True))
    return run, config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


def prompts(run: RunConfig, dataset: str, splits: tuple[str, ...]) -> set[str]:
    return {
        p["prompt_id"]
        for p in read_jsonl(RunLayout(run.storage_root).prompts_file(dataset))
        if p["split"] in splits
    }


def test_sources_phase_samples_every_source_and_dataset_exactly_n_times(tmp_path: Path) -> None:
    with serve_in_thread(SimServer(ms_per_token=0.0)) as server:
        run, config = make_run(tmp_path, {"a": server.base_url, "b": server.base_url})
        assert sample.main(["--config", str(config), "--chunk-prompts", "4"]) == 0
    layout = RunLayout(run.storage_root)
    for source, dataset, n in [("a", "mix", 3), ("b", "mix", 3), ("a", "only-a", 2)]:
        records = list(iter_folder(layout.samples_dir("sources", source, dataset)))
        counts = Counter(r["prompt_id"] for r in records)
        assert counts == dict.fromkeys(prompts(run, dataset, ("sft", "pref")), n)  # held-out prompts excluded
        assert {r["source"] for r in records} == {source}
        assert {r["sampling"]["model"] for r in records} == {f"org/{source}"}
    assert not layout.samples_dir("sources", "b", "only-a").exists()
    for name in ("sample-sources", "sample-sources-a", "sample-sources-b"):
        assert layout.stage_record(name).exists()
    record = json.loads(layout.stage_record("sample-sources-a").read_text())
    assert record["datasets"]["mix"]["prompts"] == len(prompts(run, "mix", ("sft", "pref")))


def test_shards_split_prompts_disjointly_and_name_their_records(tmp_path: Path) -> None:
    with serve_in_thread(SimServer(ms_per_token=0.0)) as server:
        run, config = make_run(tmp_path, {"a": server.base_url})
        for index in range(3):
            assert sample.main(["--config", str(config), "--source", "a", "--shard", f"{index}/3"]) == 0
    layout = RunLayout(run.storage_root)
    folder = layout.samples_dir("sources", "a", "mix")
    assert [p.name for p in complete_shards(folder)] == [f"shard-0000{i}-of-00003.jsonl" for i in range(3)]
    per_shard = [{r["prompt_id"] for r in read_jsonl(p)} for p in complete_shards(folder)]
    assert all(per_shard) and sum(len(s) for s in per_shard) == len(set().union(*per_shard))
    assert set().union(*per_shard) == prompts(run, "mix", ("sft", "pref"))
    assert layout.stage_record("sample-sources-a-shard-2-of-3").exists()
    assert not layout.stage_record("sample-sources-shard-2-of-3").exists()  # b was not sampled


def test_target_phase_samples_pref_prompts_from_the_target_endpoint(tmp_path: Path) -> None:
    with serve_in_thread(SimServer(ms_per_token=0.0, max_choices=1)) as server:
        run, config = make_run(tmp_path, {"target": server.base_url})
        assert sample.main(["--config", str(config), "--phase", "target"]) == 0
        models = {b["model"] for b in server.stats.bodies}
    layout = RunLayout(run.storage_root)
    records = list(iter_folder(layout.samples_dir("target", "target", "mix")))
    assert Counter(r["prompt_id"] for r in records) == dict.fromkeys(prompts(run, "mix", ("pref",)), 2)
    assert models == {str(layout.final_model("sft"))}  # no /models listing: the path transformers serve wants
    assert layout.stage_record("sample-target").exists()


def test_target_phase_asks_for_the_model_the_endpoint_serves(tmp_path: Path) -> None:
    with serve_in_thread(SimServer(ms_per_token=0.0, models=["target"])) as server:
        _, config = make_run(tmp_path, {"target": server.base_url}, prompts=6)
        assert sample.main(["--config", str(config), "--phase", "target"]) == 0
        assert {b["model"] for b in server.stats.bodies} == {"target"}  # vLLM --served-model-name target
    with serve_in_thread(SimServer(ms_per_token=0.0, models=["a", "b"])) as server:
        (tmp_path / "explicit").mkdir()
        _, config = make_run(tmp_path / "explicit", {"target": server.base_url}, prompts=6)
        assert sample.main(["--config", str(config), "--phase", "target", "--model", "mine"]) == 0
        assert {b["model"] for b in server.stats.bodies} == {"mine"}


def test_a_dead_endpoint_fails_its_source_and_keeps_the_others_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = dead_url()
    with serve_in_thread(SimServer(ms_per_token=0.0)) as server:
        run, config = make_run(tmp_path, {"a": server.base_url, "b": url})
        assert sample.main(["--config", str(config), "--endpoint-deadline", "0.5"]) == 1
    err = capsys.readouterr().err
    assert f"endpoint {url} for source 'b' is down" in err
    layout = RunLayout(run.storage_root)
    assert complete_shards(layout.samples_dir("sources", "a", "mix"))
    assert layout.stage_record("sample-sources-a").exists()
    assert not layout.stage_record("sample-sources-b").exists()
    assert not layout.stage_record("sample-sources").exists()


def test_missing_endpoint_prompts_or_source_are_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, config = make_run(tmp_path, {"a": "http://127.0.0.1:9/v1"})
    assert sample.main(["--config", str(config)]) == 2
    assert "endpoints has no URL for 'b'" in capsys.readouterr().err
    assert sample.main(["--config", str(config), "--source", "zzz"]) == 2
    assert "'zzz' is not a source" in capsys.readouterr().err
    RunLayout(run.storage_root).prompts_file("mix").unlink()
    assert sample.main(["--config", str(config), "--source", "a"]) == 2
    assert "run `kubefusion stage prepare` first" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample.main(["--config", str(config), "--shard", "3/3"])


def test_progress_and_sampler_metrics_are_counted(tmp_path: Path) -> None:
    from kubefusion_trainer.progress import ProgressReporter

    with serve_in_thread(SimServer(ms_per_token=0.0)) as server:
        run, _ = make_run(tmp_path, {"a": server.base_url})
        args = sample.build_parser().parse_args(["--config", "x", "--source", "a"])
        port = free_port()
        reporter = ProgressReporter("sample", metrics_port=port, show_bar=False)
        import asyncio
        import urllib.request

        try:
            assert asyncio.run(sample.run_sample(run, args, reporter)) == 0
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                scraped = response.read().decode()
        finally:
            reporter.close()
    assert f'kubefusion_sample_requests_total{{source="a"}} {float(server.stats.requests)}' in scraped
    total = 3 * len(prompts(run, "mix", ("sft", "pref"))) + 2 * len(prompts(run, "only-a", ("sft", "pref")))
    value = reporter.registry.get_sample_value
    assert value("kubefusion_progress_total", {"stage": "sample"}) == total
    assert value("kubefusion_progress_done", {"stage": "sample"}) == total
    assert value("kubefusion_sample_samples_total", {"source": "a"}) == total
    assert value("kubefusion_sample_requests_total", {"source": "a"}) == server.stats.requests
    assert value("kubefusion_sample_tokens_total", {"source": "a", "kind": "completion"}) == 16 * total


def test_sigterm_commits_finished_prompts_and_a_rerun_completes(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from conftest import subprocess_env
    from kubefusion_trainer.shards import chunk_files

    # one slot, 10 ms per answer: slow enough to be caught mid-run, with a big chunk that only SIGTERM commits
    with serve_in_thread(SimServer(slots=1, ms_per_token=1.0, answer_tokens=10)) as server:
        run, config = make_run(tmp_path, {"a": server.base_url}, prompts=40)
        command = [
            sys.executable,
            "-m",
            "kubefusion_operator",
            "stage",
            "sample",
            "--config",
            str(config),
            "--source",
            "a",
            "--chunk-prompts",
            "1000",
        ]
        process = subprocess.Popen(command, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while server.stats.choices < 10 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 143, err
        assert "interrupted" in err
        folder = RunLayout(run.storage_root).samples_dir("sources", "a", "mix")
        committed = [r for chunk in chunk_files(folder) for r in read_jsonl(chunk)]
        assert committed, "finished prompts were not committed on SIGTERM"
        assert set(Counter(r["prompt_id"] for r in committed).values()) == {3}
        assert sample.main(["--config", str(config), "--source", "a"]) == 0
    records = list(iter_folder(folder))
    assert Counter(r["prompt_id"] for r in records) == dict.fromkeys(prompts(run, "mix", ("sft", "pref")), 3)
