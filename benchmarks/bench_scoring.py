"""Reward scoring: the product's scorer vs one conversation per forward pass, and where the time goes.

One at a time is how SimPO's and RLHFlow's ArmoRM scoring scripts run (template, tokenize and forward one
conversation at a time). Same answers, same tiny reward model (kubefusion_trainer.tiny: a 2-layer Llama,
hidden size 64), CPU, one thread, side by side in one run, for short and long answers:
  per conversation            the SimPO/RLHFlow loop
  batch 1, input order        RewardScorer one row at a time (batching switched off)
  before: 64 rows, masked     the scorer before issue 14: fixed 64 rows, an attention mask, the whole model
  product                     RewardScorer.from_config at its CPU defaults: token budget 2048, <= 256 rows,
                              causal (no attention mask), the last decoder layer at one token per row
Each method runs --repeats (5) times, interleaved, and its best time counts (the machine is shared).
Goals (issue 14): product >= 5x the per-conversation loop on short answers and >= 3x on long ones.
The breakdown below the table splits the loop's time into template+tokenize, per-call overhead (a forward
of a 2-token input, times the answers) and the rest (compute); batching can remove the first two, not the
compute, so the loop's time over its compute bounds what batching alone can reach on this CPU. The product
also computes less than the loop: a classifier reads one token per row, so its last layer runs at that
token only (scoring/last_token.py). That is half of this 2-layer model's layers but ~3% of a 32-layer
8B one, so on real reward models the long-answer ratio on a CPU stays close to the batching bound.

    PYTHONPATH=operator:trainer /work/main/.venv/bin/python benchmarks/bench_scoring.py [--answers 512]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "what",
    "is",
    "12",
    "+",
    "34",
    "the",
    "answer",
    "is",
    "46",
    "reverse",
    "the",
    "word",
    "hello",
    "olleh",
    "write",
    "a",
    "python",
    "function",
    "def",
    "f",
    "x",
    "return",
    "x",
    "+",
    "1",
    "because",
    "first",
    "then",
    "finally",
    "sum",
    "total",
    "result",
]


# (question words, answer words): the quickstart's scale (short prompts, maxTokens 24) and long answers.
REGIMES = {
    "quickstart-scale (3-12 word questions, 3-20 word answers)": ((3, 12), (3, 20)),
    "long answers (4-30 word questions, 40-200 word answers)": ((4, 30), (40, 200)),
}


def conversations(
    count: int, words: tuple[tuple[int, int], tuple[int, int]], seed: int = 0
) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        question = " ".join(rng.choices(WORDS, k=rng.randint(*words[0])))
        answer = " ".join(rng.choices(WORDS, k=rng.randint(*words[1])))
        out.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    return out


def naive_score(model: Any, tokenizer: Any, data: list[list[dict[str, str]]]) -> list[float]:
    """How SimPO's and RLHFlow's ArmoRM scripts score: template, tokenize and forward one conversation at a time."""
    import torch

    rewards = []
    with torch.inference_mode():
        for conversation in data:
            ids = tokenizer.apply_chat_template(conversation, return_tensors="pt", return_dict=True)[
                "input_ids"
            ]
            rewards.append(float(model(input_ids=ids).logits[0, 0]))
    return rewards


def loop_breakdown(model: Any, tokenizer: Any, data: list[list[dict[str, str]]]) -> dict[str, float]:
    """Seconds of the per-conversation loop spent templating+tokenizing, in per-call overhead, computing."""
    import torch

    started = time.perf_counter()
    encoded = [
        tokenizer.apply_chat_template(c, return_tensors="pt", return_dict=True)["input_ids"] for c in data
    ]
    tokenize = time.perf_counter() - started
    with torch.inference_mode():
        started = time.perf_counter()
        for ids in encoded:
            model(input_ids=ids)
        forward = time.perf_counter() - started
        tiny = encoded[0][:, :2]
        started = time.perf_counter()
        for _ in data:
            model(input_ids=tiny)
        overhead = time.perf_counter() - started
    return {"tokenize": tokenize, "overhead": overhead, "compute": max(forward - overhead, 1e-9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from kubefusion_trainer.config import RewardModelConfig
    from kubefusion_trainer.scoring.reward import RewardScorer, load_reward_model
    from kubefusion_trainer.tiny import build_tiny_world

    torch.set_num_threads(1)
    goals = {"short": 5.0, "long": 3.0}
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        world = build_tiny_world(Path(tmp))
        config = RewardModelConfig(model=str(world["reward"]), maxLength=1024)
        model, tokenizer = load_reward_model(config, "cpu")
        for regime, words in REGIMES.items():
            data = conversations(args.answers, words)
            before = RewardScorer(model, tokenizer, 64, 1024)
            before.causal = False
            runs = {
                "batch 1, input order": RewardScorer(model, tokenizer, 1, 1024, sort_by_length=False),
                "before: 64 rows, masked": before,
                "product": RewardScorer.from_config(config, "cpu", lambda c, d: (model, tokenizer)),
            }
            naive = "per conversation (SimPO/RLHFlow)"
            methods: dict[str, Any] = {
                naive: lambda d=data: naive_score(model, tokenizer, d),
                **{
                    name: (lambda s=scorer, d=data: [r.reward for r in s.score(d)])
                    for name, scorer in runs.items()
                },
            }
            timings = dict.fromkeys(methods, float("inf"))
            rewards = {}
            naive_score(model, tokenizer, data[:8])  # warm-up
            for _ in range(args.repeats):
                for name, method in methods.items():
                    started = time.perf_counter()
                    rewards[name] = method()
                    timings[name] = min(timings[name], time.perf_counter() - started)
            parts = min(
                (loop_breakdown(model, tokenizer, data) for _ in range(args.repeats)),
                key=lambda p: sum(p.values()),
            )
            baseline = "batch 1, input order"
            tokens = sum(len(ids) for ids, _ in runs["product"].encode(data))
            print(
                f"\n{regime}: {args.answers} answers, {tokens:,} tokens; tiny Llama reward model, CPU, 1 thread"
            )
            print(f"{'method':<34}{'seconds':>9}{'answers/s':>11}{'vs naive':>10}{'vs batch 1':>12}")
            for name in [naive, *runs]:
                print(
                    f"{name:<34}{timings[name]:>9.2f}{args.answers / timings[name]:>11.1f}"
                    f"{timings[naive] / timings[name]:>9.1f}x{timings[baseline] / timings[name]:>11.1f}x"
                )
            drift = max(abs(a - b) for a, b in zip(rewards[naive], rewards["product"], strict=True))
            print(f"largest reward difference, product vs per conversation: {drift:.2e}")
            loop = sum(parts.values())
            bound = (
                f"batching alone (all of the overhead removed, all of the compute kept) would reach "
                f"{loop / parts['compute']:.1f}x"
                if parts["compute"] > 0.05 * loop
                else "almost all overhead: batching removes it"
            )
            print(
                f"per-conversation loop, {loop:.2f}s: template+tokenize {parts['tokenize']:.2f}s, per-call "
                f"overhead {parts['overhead']:.2f}s, compute {parts['compute']:.2f}s -> {bound}"
            )
            kind = "short" if regime.startswith("quickstart") else "long"
            ratio = timings[naive] / timings["product"]
            verdicts.append(
                f"{kind} answers: product {ratio:.1f}x the per-conversation loop (goal >= {goals[kind]:g}x): "
                f"{'met' if ratio >= goals[kind] else 'NOT met'}"
            )
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
