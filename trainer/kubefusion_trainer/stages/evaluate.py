"""`kubefusion stage evaluate --config F`: the scorecard, fused target vs original target on held-out prompts.

Reads only the run config and the run's storage: the held-out prompts (prepared/<dataset>.jsonl, split
"eval", at most spec.evaluation.maxPrompts per dataset), the original target (spec.target.model), every
trained stage's final model (train/<stage>/final) and, with --include-sources, the sources' models.
Each model answers greedily: through its own OpenAI-compatible server when the run config names one
(endpoints["eval-<model>"]: the operator serves every candidate with vLLM, the local runner with its
model server), else with transformers generate in this process (sources with --include-sources, or a
run config without servers). The answers are scored exactly as the score stage scores samples (reward model; math-verify against the gold answer; code against its tests). Outputs:

  eval/answers/<model>.jsonl   one row per prompt: answer, correct, reward (written once per model)
  eval/scorecard.json          per dataset: accuracy and mean reward per model, win rate vs original
  state/evaluate.json          the completion record

A rerun skips models whose answers file exists, so an interrupted evaluation resumes per model.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from kubefusion_trainer.atomic import atomic_write_json, atomic_write_text
from kubefusion_trainer.config import RunConfig, load_run_config
from kubefusion_trainer.layout import RunLayout, candidate_endpoint

ORIGINAL = "original"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubefusion stage evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the run config file (YAML or JSON)")
    parser.add_argument(
        "--include-sources",
        action="store_true",
        help="also evaluate the source models (sensible only when they fit this machine)",
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device for generation and rewards. Default cpu."
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="most tokens per answer. Default: spec.target.sampling.maxTokens.",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per generate call. Default 32.")
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port"
    )
    return parser


# --- pure parts ---


def held_out_prompts(layout: RunLayout, config: RunConfig) -> dict[str, list[dict[str, Any]]]:
    """Per dataset, its split-"eval" prompt records, at most maxPrompts, in file order."""
    limit = config.spec.evaluation.max_prompts if config.spec.evaluation else 500
    prompts: dict[str, list[dict[str, Any]]] = {}
    for dataset in config.spec.datasets:
        path = layout.prompts_file(dataset.name)
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no prepared prompts for dataset {dataset.name!r} (run prepare first)"
            )
        rows = []
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    record = json.loads(line)
                    if record.get("split") == "eval":
                        rows.append(record)
        prompts[dataset.name] = rows[:limit]
    return prompts


def models_to_evaluate(layout: RunLayout, config: RunConfig, include_sources: bool) -> dict[str, str]:
    """Name -> model path: the original target, each finished training stage, optionally the sources."""
    models: dict[str, str] = {}
    if include_sources:
        models.update({source.name: source.model for source in config.spec.sources})
    models[ORIGINAL] = config.spec.target.model
    second = "wrpo" if config.spec.recipe == "wrpo" else "dpo"
    for stage in ("sft", second):
        final = layout.final_model(stage)  # type: ignore[arg-type]
        if final.exists():
            models[stage] = str(final)
    return models


def scorecard(
    answers: dict[str, list[dict[str, Any]]], datasets: dict[str, str], sources: Sequence[str] = ()
) -> dict[str, Any]:
    """Per dataset: prompts, accuracy, mean reward per model, and each model's reward win rate vs original.

    answers: model -> rows {prompt_id, dataset, correct, reward}; datasets: name -> domain; sources: which
    of the models are source models (the card's "sources", for the per-stage progression).
    Win: the model's answer gets a higher reward than the original target's for the same prompt (ties 1/2).
    """
    card: dict[str, Any] = {
        "models": list(answers),
        "sources": [s for s in sources if s in answers],
        "datasets": {},
    }
    baseline = {(r["dataset"], r["prompt_id"]): r for r in answers.get(ORIGINAL, [])}
    for dataset, domain in datasets.items():
        entry: dict[str, Any] = {
            "domain": domain,
            "prompts": 0,
            "accuracy": {},
            "mean_reward": {},
            "win_rate": {},
        }
        for model, rows in answers.items():
            mine = [r for r in rows if r["dataset"] == dataset]
            entry["prompts"] = max(entry["prompts"], len(mine))
            checked = [r["correct"] for r in mine if r.get("correct") is not None]
            entry["accuracy"][model] = sum(checked) / len(checked) if checked else None
            entry["mean_reward"][model] = sum(r["reward"] for r in mine) / len(mine) if mine else None
            if model != ORIGINAL and baseline:
                outcomes = []
                for row in mine:
                    base = baseline.get((dataset, row["prompt_id"]))
                    if base is not None:
                        outcomes.append(
                            1.0
                            if row["reward"] > base["reward"]
                            else 0.5
                            if row["reward"] == base["reward"]
                            else 0.0
                        )
                entry["win_rate"][model] = sum(outcomes) / len(outcomes) if outcomes else None
        card["datasets"][dataset] = entry
    return card


PREFERENCE_STAGES = ("dpo", "wrpo")


def stage_progression(card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per dataset with checked answers: accuracy of the original target, after SFT, after the preference
    stage (dpo or wrpo), the best source (name and accuracy), and the preference stage's own gain over SFT
    (None where a stage is missing). Empty when the card has no trained stage."""
    models = card["models"]
    preference = next((m for m in PREFERENCE_STAGES if m in models), None)
    if "sft" not in models and preference is None:
        return {}
    result = {}
    for dataset, entry in card["datasets"].items():
        accuracy = entry["accuracy"]
        if all(v is None for v in accuracy.values()):
            continue
        ranked = [(accuracy[s], s) for s in card.get("sources", []) if accuracy.get(s) is not None]
        best = max(ranked, key=lambda pair: pair[0]) if ranked else (None, None)
        sft, pref = accuracy.get("sft"), accuracy.get(preference) if preference else None
        result[dataset] = {
            "original": accuracy.get(ORIGINAL),
            "sft": sft,
            "preference_stage": preference,
            "preference": pref,
            "best_source": best[1],
            "best_source_accuracy": best[0],
            "preference_gain": pref - sft if pref is not None and sft is not None else None,
        }
    return result


def format_progression(card: dict[str, Any]) -> str:
    """One line per skill: original -> sft -> preference stage (best source), and the preference gain."""
    progression = stage_progression(card)
    if not progression:
        return ""
    stage = next(iter(progression.values()))["preference_stage"] or "preference"

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    lines = [f"per skill: original -> sft -> {stage} (best source); {stage}'s own gain over sft"]
    for dataset, row in progression.items():
        gain = row["preference_gain"]
        best = f"{row['best_source']} {pct(row['best_source_accuracy'])}" if row["best_source"] else "n/a"
        lines.append(
            f"  {dataset[:16]:<16} {pct(row['original']):>6} -> {pct(row['sft']):>6} -> "
            f"{pct(row['preference']):>6}   ({best})   "
            + ("n/a" if gain is None else f"{100 * gain:+.1f} points")
        )
    return "\n".join(lines)


def format_scorecard(card: dict[str, Any]) -> str:
    """A plain-text table: one row per model, accuracy per dataset, win rate vs original; then the
    per-skill progression through the stages."""
    datasets = list(card["datasets"])
    header = f"{'model':<12}" + "".join(f"{d[:16]:>18}" for d in datasets) + f"{'win vs original':>18}"
    lines = [header, "-" * len(header)]
    for model in card["models"]:
        cells = []
        wins = []
        for dataset in datasets:
            value = card["datasets"][dataset]["accuracy"].get(model)
            cells.append(f"{value:>18.1%}" if value is not None else f"{'n/a':>18}")
            win = card["datasets"][dataset]["win_rate"].get(model)
            if win is not None:
                wins.append(win)
        win_text = f"{sum(wins) / len(wins):.1%}" if wins else "-"
        lines.append(f"{model:<12}" + "".join(cells) + f"{win_text:>18}")
    progression = format_progression(card)
    return "\n".join(lines + (["", progression] if progression else []))


# --- models (loaders injectable for tests) ---


def load_generator(path: str, device: str, chat_template: str | None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if chat_template:
        tokenizer.chat_template = chat_template
    model = AutoModelForCausalLM.from_pretrained(path).to(device)
    model.eval()
    return model, tokenizer


def generate_answers(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[list[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy answers to chat prompts, batched with left padding."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[str] = []
    for start in range(0, len(conversations), batch_size):
        chunk = []
        for messages in conversations[start : start + batch_size]:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            chunk.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        width = max(len(ids) for ids in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(chunk):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
            )
        answers += [tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]
    return answers


def answer_with_server(
    base_url: str,
    name: str,
    path: str,
    conversations: Sequence[list[dict[str, str]]],
    max_new_tokens: int,
    seed: int,
    concurrency: int = 64,
) -> list[str]:
    """Greedy answers (temperature 0) from an OpenAI-compatible server, in prompt order.

    The request names the model the server lists (vLLM: eval-<name>), else the model's path (what
    `transformers serve` is pinned to)."""
    import asyncio

    import aiohttp

    from kubefusion_trainer.sampling.client import Endpoint
    from kubefusion_trainer.stages.sample import served_model

    async def ask_all() -> list[str]:
        async with aiohttp.ClientSession() as http:
            model = await served_model(http, base_url) or path
            # Whole answers, not streamed: servers without incremental detokenization (transformers serve)
            # decode each streamed chunk alone and lose a split UTF-8 character; greedy answers must be exact.
            endpoint = Endpoint(name, base_url, http, max_in_flight=concurrency, stream=False)
            bodies = [
                {
                    "model": model,
                    "messages": list(messages),
                    "temperature": 0.0,
                    "top_p": 1.0,
                    "max_tokens": max_new_tokens,
                    "seed": seed,
                }
                for messages in conversations
            ]
            completions = await asyncio.gather(*(endpoint.complete(body) for body in bodies))
        return [c.choices[0].content for c in completions]

    return asyncio.run(ask_all())


def score_answers(
    config: RunConfig,
    layout: RunLayout,
    prompts: dict[str, list[dict[str, Any]]],
    answers: list[str],
    model: str,
    scorers: Any,
) -> list[dict[str, Any]]:
    """Rows with reward and correctness, judged exactly as the score stage judges sampled answers."""
    from kubefusion_trainer.stages.score import load_labels, score_records

    rows: list[dict[str, Any]] = []
    remaining = iter(answers)
    for dataset in config.spec.datasets:
        records = [
            {
                "prompt_id": r["prompt_id"],
                "dataset": dataset.name,
                "messages": r["messages"],
                "answer": next(remaining),
                "source": model,
            }
            for r in prompts[dataset.name]
        ]
        if not records:
            continue
        scored = score_records(records, dataset.domain, load_labels(layout, dataset), scorers)  # type: ignore[arg-type]
        rows += [
            {
                "model": model,
                "prompt_id": r["prompt_id"],
                "dataset": dataset.name,
                "answer": r["answer"],
                "correct": r["correct"],
                "reward": r["reward"],
                "reason": r["reason"],
            }
            for r in scored
        ]
    return rows


def evaluate(
    config: RunConfig,
    include_sources: bool = False,
    device: str = "cpu",
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    load_model: Callable[[str], tuple[Any, Any]] | None = None,
    reward_loader: Any = None,
    on_model: Callable[[str, int], None] = lambda name, n: None,
    answer_server: Callable[..., list[str]] = answer_with_server,
) -> dict[str, Any]:
    """Answer, score and compare; returns the scorecard (also written to eval/scorecard.json).

    load_model(path) -> (model, tokenizer), answer_server (see answer_with_server) and reward_loader (the
    score stage's Loader) are injectable.
    """
    from kubefusion_trainer.stages.score import Scorers

    layout = RunLayout(config.storage_root)
    spec = config.spec
    prompts = held_out_prompts(layout, config)
    conversations = [record["messages"] for records in prompts.values() for record in records]
    if not conversations:
        raise ValueError(
            "no held-out prompts: every dataset's prepared prompts lack split 'eval' "
            "(is spec.evaluation set, and prepare run with it?)"
        )
    tokens = max_new_tokens or spec.target.sampling.max_tokens
    load_model = load_model or (lambda path: load_generator(path, device, spec.target.chat_template))
    scorers = Scorers(spec, device, **({"loader": reward_loader} if reward_loader else {}))
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        for name, path in models_to_evaluate(layout, config, include_sources).items():
            out = layout.eval_answers(name)
            if out.exists():  # finished by an earlier run
                results[name] = [
                    json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line
                ]
                on_model(name, len(results[name]))
                continue
            server = config.endpoints.get(candidate_endpoint(name))
            if server:
                seed = spec.target.sampling.seed or 0
                answers = answer_server(server, name, path, conversations, tokens, seed)
            else:
                model, tokenizer = load_model(path)
                answers = generate_answers(model, tokenizer, conversations, tokens, batch_size)
                del model
            rows = score_answers(config, layout, prompts, answers, name, scorers)
            atomic_write_text(out, "".join(json.dumps(row) + "\n" for row in rows))
            results[name] = rows
            on_model(name, len(rows))
    finally:
        scorers.close()
    sources = [s.name for s in spec.sources] if include_sources else []
    card = scorecard(results, {d.name: d.domain for d in spec.datasets}, sources)
    atomic_write_json(layout.scorecard, card)
    return card


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kubefusion_trainer.progress import ProgressReporter

    config = load_run_config(args.config)
    layout = RunLayout(config.storage_root)
    progress = ProgressReporter("evaluate", unit="models", metrics_port=args.metrics_port)
    progress.set_total(len(models_to_evaluate(layout, config, args.include_sources)))
    try:
        card = evaluate(
            config,
            args.include_sources,
            args.device,
            args.max_new_tokens,
            args.batch_size,
            on_model=lambda name, n: progress.advance(),
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 1
    finally:
        progress.close()
    print(format_scorecard(card))
    prompts = max((d["prompts"] for d in card["datasets"].values()), default=0)
    atomic_write_json(
        layout.stage_record("evaluate"),
        {
            "stage": "evaluate",
            "models": card["models"],
            "datasets": list(card["datasets"]),
            "prompts_per_dataset": prompts,
            "scorecard": str(layout.scorecard),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
