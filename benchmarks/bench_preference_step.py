"""Step time of DPO, DPO with precomputed reference log-probs, and WRPO on the same model and batch.

    PYTHONPATH=operator:trainer /work/main/.venv/bin/python benchmarks/bench_preference_step.py

Each trainer is the stage's real one (kubefusion_trainer.training.{dpo,wrpo} builders, trl underneath),
each takes optimizer steps (Trainer.training_step: forward, backward; then clipping and AdamW) on the same
rows (one micro batch), one step of each variant in turn so that load changes hit all alike; the table
shows the median step time and each variant's ratio to plain DPO. WRPO runs 3 sequences per row against
DPO's 2, so the goal is at most 1.6x a DPO step. "setup s" includes the reference pass when precomputed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

GOAL_WRPO_OVER_DPO = 1.6


def toy_rows(count: int, answer_words: int) -> dict[str, list[dict[str, Any]]]:
    dpo, wrpo = [], []
    for i in range(count):
        prompt = [{"role": "user", "content": f"What is {i % 7} + {i % 5}? Please explain why."}]
        good = {
            "role": "assistant",
            "content": " ".join(["The answer is", str(i % 7 + i % 5)] * answer_words),
        }
        own = {"role": "assistant", "content": " ".join(["answer", str(i % 7 + i % 5)] * answer_words)}
        bad = {"role": "assistant", "content": " ".join(["False None please"] * answer_words)}
        dpo.append({"prompt": prompt, "chosen": [good], "rejected": [bad]})
        wrpo.append({"prompt": prompt, "chosen": [[good], [own]], "rejected": [bad]})
    return {"dpo": dpo, "wrpo": wrpo}


def setup(root: Path, args: argparse.Namespace) -> Path:
    from kubefusion_trainer.layout import RunLayout
    from kubefusion_trainer.tiny import build_causal_lm, build_tokenizer

    layout = RunLayout(root / "store")
    tokenizer = build_tokenizer(root / "tokenizer")
    model_config = {
        "hidden_size": args.hidden_size,
        "intermediate_size": 2 * args.hidden_size,
        "num_hidden_layers": args.layers,
    }
    build_causal_lm(
        layout.final_model("sft"), tokenizer, **model_config
    )  # DPO/WRPO start from the SFT output
    for kind, rows in toy_rows(args.rows, args.answer_words).items():
        path = layout.dataset_file(kind, "bench")  # type: ignore[arg-type]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    hp = {
        "epochs": 100,
        "learningRate": 1e-4,
        "globalBatchSize": args.micro_batch,
        "microBatchSize": args.micro_batch,
        "maxLength": 512,
        "checkpointInterval": 100000,
        "resources": {"nodes": 1, "gpusPerNode": 0, "zeroStage": 0},
    }
    config = {
        "name": "bench",
        "storageRoot": str(layout.root),
        "spec": {
            "recipe": "wrpo",
            "target": {"model": str(layout.final_model("sft"))},
            "sources": [{"name": "s", "model": "unused"}],
            "datasets": [{"name": "bench", "location": "x"}],
            "scoring": {"rewardModel": {"model": "unused"}},
            "training": {"dpo": {**hp, "beta": 0.1}, "wrpo": {**hp, "beta": 0.1, "alpha": 0.1}},
        },
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def build_trainer(config_path: Path, variant: str) -> Any:
    """The stage's real trainer for one variant, with its optimizer, ready for training steps."""
    from kubefusion_trainer.config import load_run_config
    from kubefusion_trainer.training.dpo import build_dpo_trainer
    from kubefusion_trainer.training.runner import prepare_stage
    from kubefusion_trainer.training.wrpo import build_wrpo_trainer

    run = load_run_config(str(config_path))
    stage = "wrpo" if variant == "wrpo" else "dpo"
    if variant == "dpo-precomputed":
        run.spec.training.dpo.precompute_ref_log_probs = True  # type: ignore[union-attr]
    ctx = prepare_stage(run, stage, on_gpu=torch.cuda.is_available())  # type: ignore[arg-type]
    ctx.args.update(save_strategy="no")
    trainer = (build_wrpo_trainer if stage == "wrpo" else build_dpo_trainer)(ctx)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which we drive by hand
    trainer.model.train()
    return trainer


def optimizer_step(trainer: Any, batch: dict[str, Any]) -> float:
    """One optimizer step as the Trainer takes it (forward, backward, clip, AdamW); returns seconds."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    trainer.training_step(trainer.model, batch)
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), 1.0)
    trainer.optimizer.step()
    trainer.model.zero_grad()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument(
        "--answer-words", type=int, default=8, help="answer length knob (repeats of a phrase)"
    )
    parser.add_argument("--hidden-size", type=int, default=64, help="64 = the tests' tiny model")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on shared cores)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    variants = ["dpo", "dpo-precomputed", "wrpo"]
    times: dict[str, list[float]] = {v: [] for v in variants}
    setups: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = setup(Path(tmp), args)
        trainers, batches = {}, {}
        for variant in variants:
            started = time.perf_counter()
            trainers[variant] = build_trainer(config, variant)
            setups[variant] = time.perf_counter() - started  # includes the reference pass when precomputed
            rows = [trainers[variant].train_dataset[i] for i in range(args.micro_batch)]  # the same rows
            batches[variant] = trainers[variant]._prepare_inputs(trainers[variant].data_collator(rows))
        # interleaved, one step of each variant in turn, so load changes hit all of them alike
        for step in range(args.warmup + args.steps):
            for variant in variants:
                seconds = optimizer_step(trainers[variant], batches[variant])
                if step >= args.warmup:
                    times[variant].append(seconds)

    base = statistics.median(times["dpo"])
    print(
        f"\nmodel: hidden {args.hidden_size}, {args.layers} layers; micro batch {args.micro_batch} rows; "
        f"{args.steps} timed steps each; torch threads {args.threads}; "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    print(f"{'variant':<18}{'sequences/row':>14}{'median step ms':>16}{'x DPO':>8}{'setup s':>9}")
    for variant in variants:
        median = statistics.median(times[variant])
        print(
            f"{variant:<18}{3 if variant == 'wrpo' else 2:>14}{median * 1000:>16.1f}{median / base:>8.2f}"
            f"{setups[variant]:>9.2f}"
        )
    ratio = statistics.median(times["wrpo"]) / base
    verdict = "meets" if ratio <= GOAL_WRPO_OVER_DPO else "MISSES"
    print(f"WRPO / DPO step time = {ratio:.2f} ({verdict} the goal of <= {GOAL_WRPO_OVER_DPO}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
