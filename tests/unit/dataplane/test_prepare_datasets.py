"""prepare: loading (JSONL, Parquet, datasets on disk), mapping, filters, drops, broken rows, ids, splits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubefusion_trainer.config import RunConfig
from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.records import prompt_id
from kubefusion_trainer.shards import complete_shards, iter_folder, read_jsonl
from kubefusion_trainer.stages import prepare


def make_run(
    root: Path, datasets: list[dict[str, Any]], evaluation: dict | None = None, sources: list[str] = ("a",)
) -> RunConfig:
    spec: dict[str, Any] = {
        "target": {"model": "t"},
        "sources": [{"name": s, "model": f"m-{s}"} for s in sources],
        "datasets": datasets,
        "scoring": {"rewardModel": {"model": "r"}},
    }
    if evaluation is not None:
        spec["evaluation"] = evaluation
    return RunConfig.model_validate({"name": "t", "storageRoot": str(root / "store"), "spec": spec})


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


ROWS = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(10)]


def prompts_of(run: RunConfig, name: str) -> list[dict]:
    return read_jsonl(RunLayout(run.storage_root).prompts_file(name))


def report_of(run: RunConfig, name: str) -> dict:
    return json.loads(RunLayout(run.storage_root).prepare_report(name).read_text())


def test_jsonl_prompts_get_stable_ids_gold_answers_and_a_completion_record(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    run = make_run(
        tmp_path,
        [
            {
                "name": "d",
                "location": str(data),
                "domain": "math",
                "fields": {"prompt": "prompt", "answer": "answer"},
            }
        ],
    )
    record = prepare.run_prepare(run)
    prompts = prompts_of(run, "d")
    assert [p["row_index"] for p in prompts] == list(range(10))
    for row, p in zip(ROWS, prompts, strict=True):
        messages = [{"role": "user", "content": row["prompt"]}]
        assert p["messages"] == messages
        assert p["prompt_id"] == prompt_id(messages)
        assert p["gold_answer"] == row["answer"]
        assert p["dataset"] == "d" and p["domain"] == "math"
    assert record["datasets"]["d"]["written"] == 10
    assert json.loads(RunLayout(run.storage_root).stage_record("prepare").read_text())["prompts"] == 10
    first = RunLayout(run.storage_root).prompts_file("d").read_bytes()
    prepare.run_prepare(run)  # idempotent: same ids, same splits, same bytes
    assert RunLayout(run.storage_root).prompts_file("d").read_bytes() == first


def test_parquet_and_jsonl_of_the_same_rows_give_the_same_prompts(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    run = make_run(
        tmp_path,
        [
            {"name": "p", "location": str(tmp_path / "d.parquet"), "fields": {"answer": "answer"}},
            {"name": "j", "location": str(tmp_path / "d.jsonl"), "fields": {"answer": "answer"}},
        ],
    )
    prepare.run_prepare(run)
    strip = [{k: v for k, v in p.items() if k != "dataset"} for p in prompts_of(run, "p")]
    assert strip == [{k: v for k, v in p.items() if k != "dataset"} for p in prompts_of(run, "j")]
    assert len(strip) == 10


def test_datasets_saved_to_disk_pick_the_configured_split(tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "saved"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(ROWS[:3]),
            "test": datasets.Dataset.from_list(ROWS[3:8]),
        }
    ).save_to_disk(str(folder))
    single = tmp_path / "single"
    datasets.Dataset.from_list(ROWS[:4]).save_to_disk(str(single))
    run = make_run(
        tmp_path,
        [
            {"name": "split", "location": str(folder), "split": "test"},
            {"name": "plain", "location": str(single)},
        ],
    )
    prepare.run_prepare(run)
    assert [p["messages"][0]["content"] for p in prompts_of(run, "split")] == [r["prompt"] for r in ROWS[3:8]]
    assert len(prompts_of(run, "plain")) == 4

    bad = make_run(tmp_path, [{"name": "split", "location": str(folder), "split": "validation"}])
    with pytest.raises(prepare.PrepareError, match="split 'validation' not found"):
        prepare.run_prepare(bad)


def test_a_folder_of_files_is_read_in_name_order_with_running_row_indices(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "parts"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"prompt": "one"}, "{broken"])
    pq.write_table(pa.Table.from_pylist([{"prompt": "three"}, {"prompt": "four"}]), folder / "b.parquet")
    run = make_run(tmp_path, [{"name": "parts", "location": f"file://{folder}"}])
    prepare.run_prepare(run)
    assert [(p["row_index"], p["messages"][0]["content"]) for p in prompts_of(run, "parts")] == [
        (0, "one"),
        (2, "three"),
        (3, "four"),
    ]
    assert [b["row"] for b in report_of(run, "parts")["broken"]] == [1]


def test_messages_prompts_system_column_and_sharegpt_rows(tmp_path: Path) -> None:
    rows = [
        {
            "conv": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "sum 1 2"},
                {"role": "assistant", "content": "3"},
            ],
            "sys": None,
        },
        {
            "conv": [{"from": "human", "value": "reverse abc"}, {"from": "gpt", "value": "cba"}],
            "sys": "you reverse",
        },
        {"conv": "plain text prompt", "sys": "system text"},
    ]
    data = write_jsonl(tmp_path / "m.jsonl", rows)
    run = make_run(
        tmp_path, [{"name": "m", "location": str(data), "fields": {"prompt": "conv", "system": "sys"}}]
    )
    prepare.run_prepare(run)
    got = [p["messages"] for p in prompts_of(run, "m")]
    assert got[0] == rows[0]["conv"][:4]  # the trailing assistant answer is not part of the prompt
    assert got[1] == [
        {"role": "system", "content": "you reverse"},
        {"role": "user", "content": "reverse abc"},
    ]
    assert got[2] == [
        {"role": "system", "content": "system text"},
        {"role": "user", "content": "plain text prompt"},
    ]


def test_filters_include_and_exclude_in_order(tmp_path: Path) -> None:
    rows = [
        {"prompt": p, "lang": lang}
        for p, lang in [("keep me 1", "en"), ("drop secret", "en"), ("keep me 2", "en"), ("other lang", "fr")]
    ]
    data = write_jsonl(tmp_path / "f.jsonl", rows)
    run = make_run(
        tmp_path,
        [
            {
                "name": "f",
                "location": str(data),
                "filters": [
                    {"field": "lang", "pattern": "^en$", "action": "include"},
                    {"field": "prompt", "pattern": "secret", "action": "exclude"},
                ],
            }
        ],
    )
    prepare.run_prepare(run)
    assert [p["messages"][0]["content"] for p in prompts_of(run, "f")] == ["keep me 1", "keep me 2"]
    assert report_of(run, "f")["filtered"] == 2


def test_empty_and_duplicate_prompts_are_dropped_counted_and_listed(tmp_path: Path) -> None:
    rows = [
        {"prompt": "a"},
        {"prompt": "  \n"},
        {"prompt": "a"},
        {"prompt": "b"},
        {"prompt": []},
        {"prompt": "b"},
    ]
    data = write_jsonl(tmp_path / "e.jsonl", rows)
    run = make_run(tmp_path, [{"name": "e", "location": str(data)}])
    prepare.run_prepare(run)
    report = report_of(run, "e")
    assert report["written"] == 2
    assert (report["empty_count"], report["empty"]) == (2, [1, 4])
    assert (report["duplicate_count"], report["duplicate"]) == (2, [2, 5])


def test_broken_rows_are_reported_with_their_index_not_dropped_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        {"prompt": "ok 0", "answer": 1},
        "{not json",
        {"question": "no prompt column"},
        {"prompt": 42},
        {"prompt": [{"role": "wizard", "content": "x"}]},
        "[1, 2]",
        {"prompt": "ok 6"},
    ]
    data = write_jsonl(tmp_path / "b.jsonl", rows)
    run = make_run(tmp_path, [{"name": "b", "location": str(data), "fields": {"answer": "answer"}}])
    config = tmp_path / "run.json"
    config.write_text(run.model_dump_json(by_alias=True))
    assert prepare.main(["--config", str(config)]) == 0
    report = report_of(run, "b")
    broken = {b["row"]: b["reason"] for b in report["broken"]}
    assert sorted(broken) == [1, 2, 3, 4, 5, 6]
    assert "not JSON" in broken[1]
    assert "'prompt'" in broken[2] and "missing" in broken[2]
    assert "text or a list" in broken[3]
    assert "unknown role 'wizard'" in broken[4]
    assert "'answer'" in broken[6]  # fields.answer is configured but row 6 lacks it
    assert report["broken_count"] == 6 and report["written"] == 1
    out = capsys.readouterr().out
    assert "broken 6" in out and "row 1: not JSON" in out


def test_row_limit_keeps_the_first_prompts_after_filtering(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "l.jsonl", [{"prompt": "skip"}, *ROWS])
    run = make_run(
        tmp_path,
        [
            {
                "name": "l",
                "location": str(data),
                "rowLimit": 4,
                "filters": [{"field": "prompt", "pattern": "skip"}],
            }
        ],
    )
    prepare.run_prepare(run)
    assert [p["row_index"] for p in prompts_of(run, "l")] == [1, 2, 3, 4]
    assert report_of(run, "l")["over_limit"] == 6


def test_splits_follow_fractions_held_out_and_sft_only_domains(tmp_path: Path) -> None:
    rows = [{"prompt": f"prompt {i}"} for i in range(400)]
    data = write_jsonl(tmp_path / "s.jsonl", rows)
    run = make_run(
        tmp_path,
        [
            {"name": "mix", "location": str(data), "sftFraction": 0.4},
            {"name": "zh", "location": str(data), "domain": "chinese", "sftFraction": 0.4},
        ],
        evaluation={"heldOutFraction": 0.1},
    )
    prepare.run_prepare(run)
    splits = [p["split"] for p in prompts_of(run, "mix")]
    assert 20 <= splits.count("eval") <= 60
    rest = len(splits) - splits.count("eval")
    assert 0.3 < splits.count("sft") / rest < 0.5
    assert {p["split"] for p in prompts_of(run, "zh")} <= {"sft", "eval"}
    # the same prompt lands in the same split wherever it comes from (seeded by the run)
    by_id = {p["prompt_id"]: p["split"] for p in prompts_of(run, "mix")}
    assert all(by_id[p["prompt_id"]] == p["split"] for p in prompts_of(run, "zh") if p["split"] == "eval")


def test_existing_answers_become_samples_of_a_pseudo_source(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}", "ref": f"answer {i}" if i != 3 else ""} for i in range(6)]
    data = write_jsonl(tmp_path / "x.jsonl", rows)
    run = make_run(
        tmp_path,
        [
            {
                "name": "x",
                "location": str(data),
                "sftFraction": 0.5,
                "existingAnswers": [{"source": "gold-405b", "field": "ref"}],
            }
        ],
    )
    prepare.run_prepare(run)
    folder = RunLayout(run.storage_root).samples_dir("sources", "gold-405b", "x")
    assert [p.name for p in complete_shards(folder)] == ["shard-00000-of-00001.jsonl"]
    samples = list(iter_folder(folder))
    assert [s["answer"] for s in samples] == ["answer 0", "answer 1", "answer 2", "answer 4", "answer 5"]
    ids = {p["row_index"]: p["prompt_id"] for p in prompts_of(run, "x")}
    assert all(s["source"] == "gold-405b" and s["sample_index"] == 0 for s in samples)
    assert [s["prompt_id"] for s in samples] == [ids[i] for i in (0, 1, 2, 4, 5)]
    assert report_of(run, "x")["existing_answers"]["gold-405b"] == {"written": 5, "missing": 1, "held_out": 0}

    clash = make_run(
        tmp_path, [{"name": "x", "location": str(data), "existingAnswers": [{"source": "a", "field": "ref"}]}]
    )
    with pytest.raises(prepare.PrepareError, match="also a sampled source"):
        prepare.run_prepare(clash)


def test_relative_locations_resolve_against_cwd_then_storage_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run(tmp_path, [{"name": "r", "location": "data/r.jsonl"}])
    (Path(run.storage_root) / "data").mkdir(parents=True)
    write_jsonl(Path(run.storage_root) / "data" / "r.jsonl", [{"prompt": "from storage"}])
    monkeypatch.chdir(tmp_path)
    prepare.run_prepare(run)
    assert prompts_of(run, "r")[0]["messages"][0]["content"] == "from storage"
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "r.jsonl", [{"prompt": "from cwd"}])
    prepare.run_prepare(run)
    assert prompts_of(run, "r")[0]["messages"][0]["content"] == "from cwd"


def test_missing_dataset_and_bad_config_fail_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path, [{"name": "gone", "location": str(tmp_path / "nope.jsonl")}])
    config = tmp_path / "run.json"
    config.write_text(run.model_dump_json(by_alias=True))
    assert prepare.main(["--config", str(config)]) == 1
    assert "nope.jsonl" in capsys.readouterr().err
    assert not RunLayout(run.storage_root).stage_record("prepare").exists()
    config.write_text(json.dumps({"name": "t", "storageRoot": "x", "spec": {"target": {}}}))
    assert prepare.main(["--config", str(config)]) == 2
    assert "spec.target.model" in capsys.readouterr().err


def test_hub_locations_go_through_datasets_load_dataset_with_config_split_and_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    calls = []

    def load_dataset(path: str, name: str | None = None, split: str | None = None, token: str | None = None):
        calls.append((path, name, split, token))
        if path == "org/missing":
            raise FileNotFoundError("Dataset 'org/missing' doesn't exist on the Hub")
        return datasets.Dataset.from_list(ROWS[:2])  # the hub cannot be reached here: a stand-in for it

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    run = make_run(
        tmp_path, [{"name": "hub", "location": "hf://org/name", "configName": "main", "split": "test"}]
    )
    prepare.run_prepare(run)
    assert calls == [("org/name", "main", "test", "hf_secret")]
    assert len(prompts_of(run, "hub")) == 2
    missing = make_run(tmp_path, [{"name": "hub", "location": "hf://org/missing"}])
    with pytest.raises(prepare.PrepareError, match="dataset hub: cannot load hf://org/missing"):
        prepare.run_prepare(missing)
