"""Group scored answers by prompt without holding them all, and without parsing every answer.

Pass 1 (`partition`) reads each score shard once and writes, per answer, a small index entry
(prompt_id, source, sample index, reward, correct, file number, byte offset) to one of P partition files
chosen by a hash of the prompt_id, so all answers of a prompt share a partition. Pass 2 (`groups`) loads
one partition at a time and yields its prompts with their answers; only the answers the rules pick are
read back in full (`RecordReader`, by offset). Memory is bounded by a partition's index entries.

Fields are found without parsing the line (FIELDS below); a line where that fast path is unsure is
parsed with json.loads.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from kubefusion_trainer.building.rules import Answer

SOURCE_TAG, TARGET_TAG = b"S", b"T"
# One C-level scan per line for the keys the rules need. A '"' inside a JSON string is escaped, so
# `"reward": ...` never matches text inside an answer. A key seen twice (a nested object reusing the
# name), a string value with escapes, or a missing key sends that line to json.loads instead.
FIELDS = re.compile(rb'"(prompt_id|source|sample_index|reward|correct)"\s*:\s*("[^"\\]*"|[^,}\s]+)')
CORRECT_VALUES = {b"true": True, b"false": False, b"null": None}
BLOCK_BYTES = 8 << 20


class BuildInputError(ValueError):
    pass


USUAL_ORDER = (b"prompt_id", b"source", b"sample_index", b"reward", b"correct")  # how samples are written


def _fast_entry(line: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes] | None:
    found = FIELDS.findall(line)
    if len(found) == 5:  # the usual key order: no dict needed
        (k1, pid), (k2, source), (k3, index), (k4, reward), (k5, correct) = found
        if (
            (k1, k2, k3, k4, k5) == USUAL_ORDER
            and pid[:1] == b'"' == source[:1]
            and correct in CORRECT_VALUES
        ):
            return pid[1:-1], source[1:-1], index, reward, correct
    fields = dict(found)
    seen = len(found)
    pid, source, reward = fields.get(b"prompt_id"), fields.get(b"source"), fields.get(b"reward")
    correct = fields.get(b"correct", b"null")
    if (
        pid is None
        or source is None
        or reward is None
        or seen != len(fields)
        or pid[:1] != b'"'
        or source[:1] != b'"'
        or correct not in CORRECT_VALUES
    ):
        return None
    return pid[1:-1], source[1:-1], fields.get(b"sample_index", b"0"), reward, correct


def _fields_slowly(line: bytes, where: str) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise BuildInputError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt_id"), str):
        raise BuildInputError(f"{where}: no prompt_id")
    try:
        correct = record.get("correct")
        if correct not in (True, False, None):
            raise ValueError("'correct' (true, false or null)")
        text = (
            record["prompt_id"],
            str(record["source"]),
            str(int(record.get("sample_index", 0))),
            repr(float(record["reward"])),
            json.dumps(correct),
        )
    except KeyError as exc:
        raise BuildInputError(f"{where}: scored answer has no {exc}") from None
    except (TypeError, ValueError) as exc:
        raise BuildInputError(f"{where}: scored answer lacks a valid {exc}") from None
    if any(b in part for part in text[:2] for b in "\t\n"):
        raise BuildInputError(f"{where}: prompt_id and source must not contain tabs or newlines")
    return tuple(part.encode() for part in text)  # type: ignore[return-value]


def partition(
    inputs: Iterable[tuple[bytes, Path]],
    scratch: Path,
    entries_per_partition: int = 1_000_000,
    workers: int = 2,
) -> list[list[Path]]:
    """Pass 1: index entries of every answer in `inputs` ((tag, file) pairs), hash-partitioned by prompt.

    `workers` processes index disjoint sets of input files; partition i is the list of every worker's
    file i. A bad line raises BuildInputError naming its file and line.
    """
    inputs = list(inputs)
    # ~700 bytes per scored line is typical; the estimate only sizes partitions.
    estimate = sum(path.stat().st_size for _, path in inputs) // 700 + 1
    # At least one partition per worker, so pass 2 can use them all too.
    count = max(workers, min(256, estimate // entries_per_partition + 1))
    workers = max(1, min(workers, len(inputs)))
    scratch.mkdir(parents=True, exist_ok=True)
    jobs = [
        (w, [(n, tag, path) for n, (tag, path) in enumerate(inputs) if n % workers == w])
        for w in range(workers)
    ]
    if workers == 1:
        _index_files(scratch, count, *jobs[0])
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for future in [pool.submit(_index_files, scratch, count, w, files) for w, files in jobs]:
                future.result()
    return [[_part_path(scratch, i, w) for w in range(workers)] for i in range(count)]


def _part_path(scratch: Path, index: int, worker: int) -> Path:
    return scratch / f"part-{index:04d}-w{worker}"


def _index_files(scratch: Path, count: int, worker: int, files: list[tuple[int, bytes, Path]]) -> None:
    with ExitStack() as stack:
        outs = [
            stack.enter_context(open(_part_path(scratch, i, worker), "wb", buffering=256 << 10))
            for i in range(count)
        ]
        for file_number, tag, path in files:
            _index_file(tag, file_number, path, outs)


def _blocks(path: Path) -> Iterator[bytes]:
    """The file in blocks of whole lines (each ending in a newline)."""
    with open(path, "rb") as handle:
        carry = b""
        while block := handle.read(BLOCK_BYTES):
            block = carry + block
            cut = block.rfind(b"\n") + 1
            carry = block[cut:]
            if cut:
                yield block[:cut]
        if carry:
            yield carry + b"\n"


def _index_file(tag: bytes, file_number: int, path: Path, outs: list[IO[bytes]]) -> None:
    count, offset, number = len(outs), 0, 0
    file_tag = b"%d" % file_number
    pending: list[list[bytes]] = [[] for _ in outs]
    for block in _blocks(path):
        for line in block.split(b"\n")[:-1]:
            number += 1
            start, offset = offset, offset + len(line) + 1
            entry = _fast_entry(line)
            if entry is None:
                if not line.strip():
                    continue
                entry = _fields_slowly(line, f"{path}:{number}")
            pid, source, index, reward, correct = entry
            pending[zlib.crc32(pid) % count].append(
                b"\t".join((tag, pid, source, index, reward, correct, file_tag, b"%d" % start))
            )
        for part, entries in zip(outs, pending, strict=True):
            if entries:
                part.write(b"\n".join(entries) + b"\n")
                entries.clear()


@dataclass
class PromptGroup:
    prompt_id: str
    sources: list[Answer] = field(default_factory=list)
    target: list[Answer] = field(default_factory=list)


def groups(partition_files: list[Path], inputs: list[Path]) -> Iterator[PromptGroup]:
    """Pass 2: the prompts of one partition in prompt_id order, with their answers (text not loaded;
    `Answer.ref` is b"file-number\\toffset" for RecordReader). `inputs` name files in errors."""
    by_prompt: dict[bytes, PromptGroup] = {}
    correct_values = {b"true": True, b"false": False, b"null": None}
    names: dict[bytes, str] = {}  # a few distinct sources: decode each once
    new_answer = tuple.__new__
    for line in _lines(partition_files):
        tag, pid, source, index, reward, correct, ref = line.rstrip(b"\n").split(b"\t", 6)
        group = by_prompt.get(pid)
        if group is None:
            group = by_prompt[pid] = PromptGroup(pid.decode())
        name = names.get(source) or names.setdefault(source, source.decode())
        try:
            # tuple.__new__ skips NamedTuple's Python-level __new__ (millions of answers per build).
            answer = new_answer(Answer, (name, int(index), "", float(reward), correct_values[correct], ref))
        except ValueError:
            raise BuildInputError(
                f"{_where(ref, inputs)}: sample_index {index!r} or reward {reward!r} is not a number"
            ) from None
        (group.target if tag == TARGET_TAG else group.sources).append(answer)
    for pid in sorted(by_prompt):
        yield by_prompt.pop(pid)


def _where(ref: bytes, inputs: list[Path]) -> str:
    file_number, offset = ref.split(b"\t")
    return f"{inputs[int(file_number)]} (line at byte {int(offset)})"


def _lines(paths: list[Path]) -> Iterator[bytes]:
    for path in paths:
        with open(path, "rb") as handle:
            yield from handle


class RecordReader:
    """Reads picked answers back from the score shards by offset (a few open files at a time)."""

    def __init__(self, inputs: list[Path], max_open: int = 64) -> None:
        self.inputs = inputs
        self.max_open = max_open
        self._open: OrderedDict[int, IO[bytes]] = OrderedDict()

    def load(self, answer: Answer) -> tuple[str, list]:
        """(answer text, prompt messages) of a picked answer."""
        file_number, offset = (int(part) for part in answer.ref.split(b"\t"))
        handle = self._open.pop(file_number, None) or open(self.inputs[file_number], "rb")  # noqa: SIM115
        self._open[file_number] = handle
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)[1].close()
        handle.seek(offset)
        where = f"{self.inputs[file_number]} (byte {offset})"
        try:
            record = json.loads(handle.readline())
            text, messages = record["answer"], record["messages"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BuildInputError(f"{where}: not a scored answer record ({exc})") from exc
        if not isinstance(text, str) or not isinstance(messages, list):
            raise BuildInputError(f"{where}: 'answer' must be text and 'messages' a list")
        return text, messages

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()

    def __enter__(self) -> RecordReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
