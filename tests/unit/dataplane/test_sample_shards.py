"""The shard store: chunks committed atomically, done prompt ids, finalisation, readers skip partial work."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubefusion_trainer.shards import (
    ShardReadError,
    ShardWriter,
    chunk_files,
    complete_shards,
    iter_folder,
    missing_shards,
    read_jsonl,
    write_shard,
)


def records(pid: str, n: int = 2) -> list[dict]:
    return [{"prompt_id": pid, "sample_index": i, "answer": f"{pid}-{i}"} for i in range(n)]


def test_chunks_are_committed_and_finalised_into_one_shard(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, 1, 3)
    writer.commit_chunk([*records("a"), *records("b")])
    writer.commit_chunk([])  # nothing to commit: no file
    writer.commit_chunk(records("c"))
    (tmp_path / ".shard-00001-of-00003.jsonl.x.tmp").write_text("half a line")  # a write in flight
    assert complete_shards(tmp_path) == []  # readers see nothing until the shard is whole
    assert len(chunk_files(tmp_path)) == 2
    assert ShardWriter(tmp_path, 1, 3).done_prompt_ids() == {"a", "b", "c"}
    assert writer.finalize() == 6
    assert [p.name for p in complete_shards(tmp_path)] == ["shard-00001-of-00003.jsonl"]
    assert [r["answer"] for r in iter_folder(tmp_path)] == ["a-0", "a-1", "b-0", "b-1", "c-0", "c-1"]
    assert chunk_files(tmp_path) == []
    assert missing_shards(tmp_path) == ["shard-00000-of-00003.jsonl", "shard-00002-of-00003.jsonl"]


def test_a_restarted_writer_continues_numbering_and_sees_other_shard_counts(tmp_path: Path) -> None:
    ShardWriter(tmp_path, 0, 2).commit_chunk(records("a"))
    write_shard(tmp_path, 0, 1, records("old"))  # an earlier run with another shard count
    again = ShardWriter(tmp_path, 0, 2)
    assert again.done_prompt_ids() == {"a", "old"}
    assert again.commit_chunk(records("b")).name.startswith("chunk-000001-")  # type: ignore[union-attr]


def test_a_kill_between_shard_rename_and_chunk_cleanup_reads_nothing_twice(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, 0, 1)
    writer.commit_chunk(records("a"))
    write_shard(tmp_path, 0, 1, records("a"))  # the rename happened, the chunk folder is still there
    assert len(list(iter_folder(tmp_path))) == 2
    restarted = ShardWriter(tmp_path, 0, 1)
    assert restarted.is_complete() and restarted.done_prompt_ids() == {"a"}
    assert restarted.finalize() == 2
    assert chunk_files(tmp_path) == [] and len(list(iter_folder(tmp_path))) == 2


def test_a_complete_shard_gains_the_prompts_of_later_chunks(tmp_path: Path) -> None:
    write_shard(tmp_path, 0, 1, [*records("a"), *records("b")])
    writer = ShardWriter(tmp_path, 0, 1)
    writer.commit_chunk(records("c"))
    assert writer.finalize() == 6
    assert [r["answer"] for r in iter_folder(tmp_path)] == ["a-0", "a-1", "b-0", "b-1", "c-0", "c-1"]


def test_finalize_drops_a_record_committed_twice(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, 0, 1)
    writer.commit_chunk(records("a"))
    writer.commit_chunk(records("a"))
    assert writer.finalize() == 2


def test_malformed_lines_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "shard-00000-of-00001.jsonl"
    path.write_text('{"prompt_id": "a"}\n{oops\n')
    with pytest.raises(ShardReadError, match=r"shard-00000-of-00001.jsonl:2"):
        read_jsonl(path)
