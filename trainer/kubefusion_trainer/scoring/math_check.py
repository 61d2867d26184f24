"""Math answers against gold labels with math-verify, in worker processes.

math-verify's own timeout uses signal.alarm, which only works in a process's main thread: so checks run
in a process pool (each task in its worker's main thread, math-verify's timeout intact), and the parent
adds a backstop deadline per chunk; a chunk past it is marked incorrect ("timed out") and the pool is
replaced, so one pathological expression cannot stall scoring.

Gold labels that are words, not mathematics (e.g. "olleh"), are compared as text with the answer's final
answer (the last \\boxed{...}, else the text after the last "answer is", else the last word).
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import re
from collections.abc import Callable

MATH_CHARS = re.compile(r"[\d\\^$=+*/{}()]")
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
ANSWER_IS = re.compile(r"answer\s*(?:is\s*:?|:)\s*([^\n]+)", re.IGNORECASE)


def check_math(gold: str, answer: str, timeout_seconds: int = 5) -> tuple[bool, str]:
    """(correct, reason). Call in a process's main thread (math-verify's signal-based timeout)."""
    gold = str(gold).strip()
    if not gold:
        return False, "empty gold answer"
    if not MATH_CHARS.search(gold):
        return _check_text(gold, answer)
    from math_verify import parse, verify

    gold_parsed = parse(f"${gold}$", parsing_timeout=timeout_seconds) or parse(
        gold, parsing_timeout=timeout_seconds
    )
    if not gold_parsed:
        return _check_text(gold, answer)
    predicted = parse(answer, parsing_timeout=timeout_seconds)
    if not predicted:
        return False, "no final answer found"
    if verify(gold_parsed, predicted, timeout_seconds=timeout_seconds):
        return True, f"final answer {_show(predicted)} equals gold {gold[:40]}"
    return False, f"final answer {_show(predicted)} != gold {gold[:40]}"


def _show(parsed: list) -> str:
    return str(parsed[-1] if parsed else "")[:40]


def _normalise(text: str) -> str:
    return re.sub(r"[\s.,;:!?\"'`*]+", " ", text).strip().lower()


def final_text_answer(answer: str) -> str:
    boxed = BOXED.findall(answer)
    if boxed:
        return boxed[-1]
    said = ANSWER_IS.findall(answer)
    if said:
        return said[-1].split(". ")[0]  # the sentence that gives it, not what follows
    words = answer.split()
    return words[-1] if words else ""


def _check_text(gold: str, answer: str) -> tuple[bool, str]:
    final = _normalise(final_text_answer(answer))
    if final == _normalise(gold):
        return True, f"final answer {final[:40]!r} matches gold (text)"
    return False, f"final answer {final[:40]!r} != gold {gold[:40]!r} (text)"


def check_chunk(pairs: list[tuple[str, str]], timeout_seconds: int) -> list[tuple[bool, str]]:
    """Check a list of (gold, answer) pairs; what a worker process runs."""
    out = []
    for gold, answer in pairs:
        try:
            out.append(check_math(gold, answer, timeout_seconds))
        except Exception as exc:  # math-verify raises on some inputs even with raise_on_error=False
            out.append((False, f"math check failed: {type(exc).__name__}: {exc}"[:200]))
    return out


ChunkChecker = Callable[[list[tuple[str, str]], int], list[tuple[bool, str]]]


class MathChecker:
    """check_many((gold, answer) pairs) -> [(correct, reason)], in `workers` processes."""

    def __init__(
        self,
        workers: int = 1,
        timeout_seconds: int = 5,
        chunk_size: int = 64,
        chunk_checker: ChunkChecker = check_chunk,
    ) -> None:
        self.chunk_checker = chunk_checker  # a module-level function (it is sent to worker processes)
        self.workers = workers
        self.timeout_seconds = timeout_seconds
        self.chunk_size = chunk_size
        self._pool: futures.ProcessPoolExecutor | None = None

    def _executor(self) -> futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        return self._pool

    def check_many(self, pairs: list[tuple[str, str]]) -> list[tuple[bool, str]]:
        chunks = [pairs[i : i + self.chunk_size] for i in range(0, len(pairs), self.chunk_size)]
        results: list[tuple[bool, str]] = []
        done = 0
        while done < len(chunks):
            pending = [
                self._executor().submit(self.chunk_checker, c, self.timeout_seconds) for c in chunks[done:]
            ]
            for future in pending:
                chunk = chunks[done]
                # Backstop: math-verify times out each parse/verify itself; 3 calls per pair, plus start-up.
                deadline = 3 * self.timeout_seconds * len(chunk) + 60
                done += 1
                try:
                    results.extend(future.result(timeout=deadline))
                except (futures.TimeoutError, futures.process.BrokenProcessPool) as exc:
                    results.extend(
                        (False, f"math check timed out or crashed ({type(exc).__name__})") for _ in chunk
                    )
                    self._reset()  # the chunks after this one go to a fresh pool
                    break
        return results

    def _reset(self) -> None:
        if self._pool is not None:
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.kill()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> MathChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
