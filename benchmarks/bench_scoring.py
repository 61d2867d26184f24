"""Reward scoring: batched, length-sorted (RewardScorer) vs one conversation per forward pass.

One at a time is how SimPO's and RLHFlow's ArmoRM scoring scripts run. Same answers, same tiny reward
model (kubefusion_trainer.tiny), CPU, one thread, side by side in one run; prints a table with the ratio
(goal: batched at least 5x faster) and the largest reward difference between the two (should be ~0).

    PYTHONPATH=operator:trainer /work/main/.venv/bin/python benchmarks/bench_scoring.py [--answers 512]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64, help="Default 64, the quickstart's batchSize.")
    args = parser.parse_args()

    import torch

    from kubefusion_trainer.config import RewardModelConfig
    from kubefusion_trainer.scoring.reward import RewardScorer, load_reward_model
    from kubefusion_trainer.tiny import build_tiny_world

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        world = build_tiny_world(Path(tmp))
        model, tokenizer = load_reward_model(RewardModelConfig(model=str(world["reward"])), "cpu")
        for regime, words in REGIMES.items():
            data = conversations(args.answers, words)
            runs = {
                "batch 1, input order": RewardScorer(model, tokenizer, 1, 1024, sort_by_length=False),
                f"batch {args.batch_size}, length-sorted": RewardScorer(
                    model, tokenizer, args.batch_size, 1024
                ),
            }
            timings, rewards = {}, {}
            for name, scorer in runs.items():
                scorer.score(data[:8])  # warm-up
                started = time.perf_counter()
                rewards[name] = [r.reward for r in scorer.score(data)]
                timings[name] = time.perf_counter() - started
            baseline, batched = list(runs)
            tokens = sum(len(ids) for ids, _ in runs[baseline].encode(data))
            print(
                f"\n{regime}: {args.answers} answers, {tokens:,} tokens; tiny Llama reward model, CPU, 1 thread"
            )
            print(f"{'method':<28}{'seconds':>10}{'answers/s':>12}{'speed-up':>10}")
            for name in runs:
                speed_up = timings[baseline] / timings[name]
                print(
                    f"{name:<28}{timings[name]:>10.2f}{args.answers / timings[name]:>12.1f}{speed_up:>9.1f}x"
                )
            drift = max(abs(a - b) for a, b in zip(rewards[baseline], rewards[batched], strict=True))
            print(f"largest reward difference between the two: {drift:.2e}")


if __name__ == "__main__":
    main()
