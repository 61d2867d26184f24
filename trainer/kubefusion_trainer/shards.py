"""Shard store: JSONL record shards committed atomically, and the chunks of a shard still being written.

One shard folder (RunLayout.samples_dir / scores_dir) holds:

    shard-00000-of-00004.jsonl                    a COMPLETE shard (committed by one atomic rename)
    chunks/shard-00001-of-00004/chunk-000000-<writer>.jsonl  committed pieces of a shard whose writer is still running
    .<name>.<random>.tmp                          a write in flight: never read, removed on the next run

Readers (the score and build stages) use only complete shards: `complete_shards`, `read_shard`,
`iter_folder`, and `missing_shards` to tell whether a folder's shard set is whole.

Writers use a `ShardWriter`. Exactly-once rule: a chunk holds every record of the prompts it contains (all N
samples of a prompt go into the same chunk), so a prompt is committed entirely or not at all. A restarted
writer asks `done_prompt_ids()` (prompt ids in every shard and chunk of the folder, whatever the shard count,
so a rerun with another --shard N still skips them) and works only on the rest; a kill loses at most the
prompts that were not yet in a chunk. `finalize()` concatenates the chunks into the shard file (atomic), then
removes the chunk folder; a kill between the two leaves both, and since readers only read shard files and
`done_prompt_ids` de-duplicates, nothing is read twice; the next `finalize` merges and cleans up.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubefusion_trainer.atomic import atomic_open
from kubefusion_trainer.layout import chunks_dir, shard_name

SHARD_PATTERN = re.compile(r"^shard-(\d{5})-of-(\d{5})\.jsonl$")
CHUNK_PATTERN = re.compile(r"^chunk-(\d{6})-[0-9a-f]{8}\.jsonl$")


def in_prompt_shard(prompt_id: str, index: int, count: int) -> bool:
    """Whether a prompt belongs to shard `index` of `count`: its id, read as a hex number, modulo count."""
    return int(prompt_id, 16) % count == index


class ShardReadError(ValueError):
    """A committed shard or chunk holds a line that is not a JSON object (names the file and line)."""


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, object]]) -> int:
    """Write records as JSONL atomically (temp file + fsync + rename); returns how many were written."""
    count = 0
    with atomic_open(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a committed JSONL file; a malformed line raises ShardReadError naming it."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ShardReadError(f"{path}:{number}: not JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise ShardReadError(f"{path}:{number}: a record must be a JSON object")
            records.append(record)
    return records


def write_shard(folder: str | Path, index: int, count: int, records: Iterable[Mapping[str, object]]) -> Path:
    """Commit a whole shard at once (e.g. prepare's existing answers); returns its path."""
    path = Path(folder) / shard_name(index, count)
    write_jsonl(path, records)
    return path


def complete_shards(folder: str | Path) -> list[Path]:
    """The committed shard files of a folder, sorted; temp files and chunk folders are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and SHARD_PATTERN.match(p.name))


def read_shard(path: str | Path) -> list[dict[str, Any]]:
    return read_jsonl(path)


def iter_folder(folder: str | Path) -> Iterator[dict[str, Any]]:
    """Every record of every complete shard of a folder."""
    for path in complete_shards(folder):
        yield from read_jsonl(path)


def missing_shards(folder: str | Path) -> list[str]:
    """Shard names a folder should have but lacks, judged from the -of-N counts present.

    Empty when the folder's shards form whole sets (e.g. all of 0..3 of 4). A folder with no shard at all
    reports nothing: the caller knows whether it expects one.
    """
    present: dict[int, set[int]] = {}
    for path in complete_shards(folder):
        match = SHARD_PATTERN.match(path.name)
        assert match is not None
        present.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    return [
        shard_name(i, count) for count, have in sorted(present.items()) for i in range(count) if i not in have
    ]


def chunk_files(folder: str | Path) -> list[Path]:
    """Committed chunk files of all unfinished shards of a shard folder."""
    root = Path(folder) / "chunks"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("*/chunk-*.jsonl") if CHUNK_PATTERN.match(p.name))


class ShardWriter:
    """Commits one shard (index of count) of a folder as chunks, then as one shard file."""

    def __init__(self, folder: str | Path, index: int, count: int) -> None:
        self.folder = Path(folder)
        self.index, self.count = index, count
        self.path = self.folder / shard_name(index, count)
        self.chunks = chunks_dir(self.folder, index, count)
        self._next_chunk = self._count_existing_chunks()
        self._token = secrets.token_hex(4)  # two writers of one shard by mistake never overwrite each other

    def _count_existing_chunks(self) -> int:
        numbers = [int(m.group(1)) for p in self._own_chunks() if (m := CHUNK_PATTERN.match(p.name))]
        return max(numbers, default=-1) + 1

    def _own_chunks(self) -> list[Path]:
        if not self.chunks.is_dir():
            return []
        return sorted(p for p in self.chunks.iterdir() if CHUNK_PATTERN.match(p.name))

    def is_complete(self) -> bool:
        return self.path.is_file()

    def pending_chunks(self) -> list[Path]:
        """Committed chunks of this shard not yet assembled into its file."""
        return self._own_chunks()

    def done_prompt_ids(self) -> set[str]:
        """Prompt ids already committed anywhere in the folder (shards of any count, and their chunks)."""
        done: set[str] = set()
        for path in [*complete_shards(self.folder), *chunk_files(self.folder)]:
            done.update(str(r["prompt_id"]) for r in read_jsonl(path))
        return done

    def commit_chunk(self, records: Sequence[Mapping[str, object]]) -> Path | None:
        """Atomically commit the records of whole prompts; returns the chunk path (None when empty)."""
        if not records:
            return None
        path = self.chunks / f"chunk-{self._next_chunk:06d}-{self._token}.jsonl"
        write_jsonl(path, records)
        self._next_chunk += 1
        return path

    def finalize(self) -> int:
        """Assemble the shard file (atomic) from its previous version and the chunks, then remove the chunks.

        Returns the shard's record count. A shard that is complete already gains the prompts of later chunks
        (the prompt set grew since, e.g. a larger rowLimit). Records are de-duplicated on (prompt, sample), which
        also covers chunks a kill left behind after the rename, and two pods given the same index by mistake.
        """
        chunks = self._own_chunks()
        if self.is_complete() and not chunks:
            return len(read_jsonl(self.path))
        seen: set[tuple[str, int]] = set()
        count = 0
        sources = ([self.path] if self.is_complete() else []) + chunks
        with atomic_open(self.path) as out:
            for source in sources:
                for record in read_jsonl(source):
                    key = (str(record["prompt_id"]), int(record.get("sample_index", 0)))
                    if key not in seen:
                        seen.add(key)
                        out.write(json.dumps(record, ensure_ascii=False) + "\n")
                        count += 1
        shutil.rmtree(self.chunks, ignore_errors=True)
        return count
