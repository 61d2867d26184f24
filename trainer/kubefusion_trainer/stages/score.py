"""`kubefusion stage score`: reward, math and code scores for every sampled answer.

For every (model, dataset) it reads the sample shards (samples/<phase>/<model>/<dataset>/shard-*.jsonl)
and writes scores/<phase>/<model>/<dataset>/shard-I-of-N.jsonl: every SampleRecord plus `reward`, `correct`
(true/false, or null when not applicable) and `reason`. `--shard I/N` scores the prompts whose id is I
modulo N (the pods of an Indexed Job); answers are committed in chunks of whole prompts and a complete
shard is skipped, so a rerun after a kill resumes and no score is lost or written twice
(scoring/by_prompt.py). Math checks and code runs (CPU, `--concurrency` workers) run while the reward model
scores the same chunk.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubefusion_trainer.atomic import atomic_write_json
from kubefusion_trainer.config import DatasetConfig, FusionConfig, load_run_config
from kubefusion_trainer.layout import TARGET_MODEL_NAME, Phase, RunLayout
from kubefusion_trainer.records import SampleRecord, ScoredRecord
from kubefusion_trainer.scoring.by_prompt import score_folder
from kubefusion_trainer.scoring.code_items import CodeItem, VerdictShards, prepare_answer
from kubefusion_trainer.scoring.code_sandbox import CodeSandbox, judge
from kubefusion_trainer.scoring.math_check import MathChecker
from kubefusion_trainer.scoring.reward import Loader, RewardScorer, load_reward_model
from kubefusion_trainer.shards import complete_shards, missing_shards


class InputError(ValueError):
    """Bad input, named by file and line."""


@dataclass(frozen=True)
class Unit:
    model: str
    dataset: DatasetConfig
    sample_shards: tuple[Path, ...]
    scores: Path  # the folder its score shards go to


@dataclass
class Scorers:
    """Everything scoring needs, built lazily (the reward model loads only if a shard needs scoring)."""

    spec: FusionConfig
    device: str = "cpu"
    concurrency: int = 2
    loader: Loader = load_reward_model
    _reward: RewardScorer | None = None
    _math: MathChecker | None = None
    _sandbox: CodeSandbox | None = None
    counts: Counter = field(default_factory=Counter)
    sandbox_verdicts: VerdictShards | None = None  # --sandbox-verdicts: code ran in sandbox pods

    @property
    def reward(self) -> RewardScorer:
        if self._reward is None:
            self._reward = RewardScorer.from_config(self.spec.scoring.reward_model, self.device, self.loader)
        return self._reward

    @property
    def math(self) -> MathChecker:
        if self._math is None:
            self._math = MathChecker(workers=self.concurrency)
        return self._math

    @property
    def sandbox(self) -> CodeSandbox:
        if self._sandbox is None:
            from kubefusion_trainer.stages.verify_code import sandbox_limits

            self._sandbox = CodeSandbox(sandbox_limits(self.spec), concurrency=self.concurrency)
            print(f"code sandbox: {self._sandbox.isolation}", file=sys.stderr)
        return self._sandbox

    def code_verdict(self, item: CodeItem) -> tuple[bool, str]:
        """From the sandbox pods' verdict shards when given, else run it here."""
        if self.sandbox_verdicts is not None:
            verdict = judge(item.plan, self.sandbox_verdicts.use(item))
        else:
            verdict = self.sandbox.run(item.code, item.plan)
        self.counts[f"code_{verdict.category}"] += 1
        return verdict.passed, f"code: {verdict.reason}"

    def close(self) -> None:
        if self._math is not None:
            self._math.close()
        if self._sandbox is not None:
            self._sandbox.close()


def plan_units(spec: FusionConfig, layout: RunLayout, phase: Phase) -> list[Unit]:
    """Every (model, dataset) of a phase with its sample shards, in a stable order."""
    units = []
    for dataset in spec.datasets:
        if phase == "target":
            if dataset.sft_only:
                continue
            models = [TARGET_MODEL_NAME]
        else:
            models = [s.name for s in spec.dataset_sources(dataset)] + [
                e.source for e in dataset.existing_answers
            ]
        for model in models:
            shards = tuple(sample_shards(layout, phase, model, dataset.name))
            if shards:
                units.append(Unit(model, dataset, shards, layout.scores_dir(phase, model, dataset.name)))
    return units


def sample_shards(layout: RunLayout, phase: Phase, model: str, dataset: str) -> list[Path]:
    """The committed sample shards of one model and dataset; an error while the set is unfinished."""
    folder = layout.samples_dir(phase, model, dataset)
    missing = missing_shards(folder)
    if missing:
        raise InputError(
            f"{folder}: sampling is unfinished ({len(missing)} shards missing, e.g. {missing[0]}); "
            "finish `kubefusion stage sample` first"
        )
    return complete_shards(folder)


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise InputError(f"{path}:{number}: expected a JSON object")
            yield number, record


def load_labels(layout: RunLayout, dataset: DatasetConfig) -> dict[str, tuple[Any, Any]]:
    """prompt_id -> (gold_answer, tests), only for datasets that check correctness."""
    if dataset.domain not in ("math", "code"):
        return {}
    path = layout.prompts_file(dataset.name)
    if not path.exists():
        raise InputError(f"{path}: prepared prompts are missing (run `kubefusion stage prepare` first)")
    return {r["prompt_id"]: (r.get("gold_answer"), r.get("tests")) for _, r in read_jsonl(path)}


def score_records(
    records: list[SampleRecord], domain: str, labels: dict[str, tuple[Any, Any]], scorers: Scorers
) -> list[ScoredRecord]:
    with ThreadPoolExecutor(1) as background:  # CPU checks run while the reward model scores
        checking = background.submit(_verdicts, records, domain, labels, scorers)
        rewards = scorers.reward.score(
            [[*r["messages"], {"role": "assistant", "content": r["answer"]}] for r in records]
        )
        verdicts = checking.result()
    scored = []
    for record, result, (correct, why) in zip(records, rewards, verdicts, strict=True):
        note = f"reward on {result.tokens} tokens" + (
            f" (TRUNCATED to maxLength {scorers.reward.max_length})" if result.truncated else ""
        )
        scorers.counts["truncated"] += result.truncated
        scorers.counts[{True: "correct", False: "incorrect", None: "not_checked"}[correct]] += 1
        scored.append({**record, "reward": result.reward, "correct": correct, "reason": f"{why}; {note}"})
    return scored  # type: ignore[return-value]


def _verdicts(
    records: list[SampleRecord], domain: str, labels: dict, scorers: Scorers
) -> list[tuple[bool | None, str]]:
    if domain == "math":
        return _math_verdicts(records, labels, scorers)
    if domain == "code":
        return _code_verdicts(records, labels, scorers)
    return [(None, f"{domain}: correctness not checked")] * len(records)


def _math_verdicts(
    records: list[SampleRecord], labels: dict, scorers: Scorers
) -> list[tuple[bool | None, str]]:
    out: list[tuple[bool | None, str]] = [(None, "math: no gold answer")] * len(records)
    todo = [
        (i, labels[r["prompt_id"]][0])
        for i, r in enumerate(records)
        if labels.get(r["prompt_id"], (None,))[0]
    ]
    checked = scorers.math.check_many([(str(gold), records[i]["answer"]) for i, gold in todo])
    for (i, _), (correct, why) in zip(todo, checked, strict=True):
        out[i] = (correct, f"math: {why}")
    return out


def _code_verdicts(
    records: list[SampleRecord], labels: dict, scorers: Scorers
) -> list[tuple[bool | None, str]]:
    def verdict(record: SampleRecord) -> tuple[bool | None, str]:
        tests = labels.get(record["prompt_id"], (None, None))[1]
        prepared = prepare_answer(record, tests)  # type: ignore[arg-type]
        return scorers.code_verdict(prepared) if isinstance(prepared, CodeItem) else prepared

    with ThreadPoolExecutor(scorers.concurrency) as pool:
        return list(pool.map(verdict, records))


def load_sandbox_verdicts(spec: FusionConfig, layout: RunLayout, phase: Phase) -> VerdictShards:
    count = spec.scoring.code_execution.sandbox_pods
    try:
        return VerdictShards.load([layout.sandbox_verdicts(phase, i, count) for i in range(count)])
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from exc


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like I/N, not {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text}: I must be in 0..N-1")
    return index, count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubefusion stage score", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="Run config file (YAML or JSON).")
    parser.add_argument("--phase", choices=("sources", "target"), default="sources", help="Default sources.")
    parser.add_argument(
        "--shard", type=parse_shard, default=(0, 1), help="I/N: score the prompts whose id is I modulo N."
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="Reward model device.")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="Parallel code runs and math workers; on a cluster the pod's CPU request. Default 2.",
    )
    parser.add_argument(
        "--chunk-answers",
        type=int,
        default=1024,
        help="Commit scores every this many answers (whole prompts). Default 1024.",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port."
    )
    parser.add_argument(
        "--sandbox-verdicts",
        action="store_true",
        help="Take code verdicts from `stage verify-code`'s shards instead of running code here.",
    )
    return parser


def run(args: argparse.Namespace, loader: Loader = load_reward_model) -> dict[str, Any]:
    from kubefusion_trainer.progress import ProgressReporter

    config = load_run_config(args.config)
    layout = RunLayout(config.storage_root)
    index, count = args.shard
    units = plan_units(config.spec, layout, args.phase)
    scorers = Scorers(config.spec, args.device, max(1, args.concurrency), loader)
    if getattr(args, "sandbox_verdicts", False):
        scorers.sandbox_verdicts = load_sandbox_verdicts(config.spec, layout, args.phase)
    progress = ProgressReporter("score", unit="folders", metrics_port=args.metrics_port)
    progress.set_total(len(units))
    started = time.monotonic()
    try:
        for unit in units:
            labels: dict[str, tuple[Any, Any]] | None = None

            def score(records: list[SampleRecord], unit: Unit = unit) -> list[ScoredRecord]:
                nonlocal labels
                if labels is None:  # read only when this pod has answers of the dataset to score
                    labels = load_labels(layout, unit.dataset)
                return score_records(records, unit.dataset.domain, labels, scorers)

            score_folder(
                unit.sample_shards,
                unit.scores,
                (index, count),
                score,
                scorers.counts,
                getattr(args, "chunk_answers", 1024),
            )
            progress.advance()
    finally:
        scorers.close()
        progress.close()
    summary = {
        "phase": args.phase,
        "shard": f"{index}/{count}",
        "folders": len(units),
        "seconds": round(time.monotonic() - started, 3),
        **{k: int(v) for k, v in scorers.counts.items()},
    }
    if scorers._sandbox is not None:
        summary["sandbox_isolation"] = scorers._sandbox.isolation
    if scorers.sandbox_verdicts is not None:
        summary["sandbox_isolation"] = "; ".join(sorted(scorers.sandbox_verdicts.isolation))
        summary["sandbox_verdicts_merged"] = len(scorers.sandbox_verdicts.used)
    name = f"score-{args.phase}" + (f"-shard-{index}-of-{count}" if count > 1 else "")
    atomic_write_json(layout.stage_record(name), summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (InputError, OSError, ValueError) as exc:
        print(f"score: error: {exc}", file=sys.stderr)
        return 1
    if summary.get("truncated"):
        print(
            f"score: {summary['truncated']} answers were truncated to maxLength for the reward model",
            file=sys.stderr,
        )
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
