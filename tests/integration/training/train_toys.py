"""Toy training data, run configs and log-ratio checks shared by the training integration tests.

The toy set is separable: chosen answers state a sum ("The answer is 7."), rejected answers are filler
("False None please ..."), so a preference-trained model should rank every pair correctly.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import TrainerCallback

from kubefusion_trainer.layout import RunLayout

REJECTED = ["False None please", "None None because", "please explain why"]


def toy_rows(kind: str, count: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(count):
        a, b = i % 7, (3 * i) % 5
        prompt = [{"role": "user", "content": f"What is {a} + {b}?"}]
        good = {"role": "assistant", "content": f"The answer is {a + b}."}
        own = {"role": "assistant", "content": f"answer {a + b}"}
        bad = {"role": "assistant", "content": REJECTED[i % len(REJECTED)]}
        meta = {"prompt_id": f"p{i}", "dataset": "toy"}
        if kind == "sft":
            rows.append({"messages": [*prompt, good], **meta})
        elif kind == "dpo":
            rows.append({"prompt": prompt, "chosen": [good], "rejected": [bad], "source": "s", **meta})
        else:
            rows.append({"prompt": prompt, "chosen": [[good], [own]], "rejected": [bad], **meta})
    return rows


def write_toy_data(storage: Path, count: int = 32, kinds: tuple[str, ...] = ("sft", "dpo", "wrpo")) -> None:
    layout = RunLayout(storage)
    for kind in kinds:
        path = layout.dataset_file(kind, "toy")  # type: ignore[arg-type]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in toy_rows(kind, count)), encoding="utf-8")


def hyperparameters(**overrides: Any) -> dict[str, Any]:
    hp = {
        "epochs": 2,
        "learningRate": 1e-3,
        "globalBatchSize": 8,
        "microBatchSize": 4,
        "maxLength": 64,
        "warmupRatio": 0.1,
        "checkpointInterval": 4,
        "resources": {"nodes": 1, "gpusPerNode": 0, "zeroStage": 0},
    }
    hp.update(overrides)
    return hp


def write_run_config(path: Path, storage: Path, world: dict[str, Path], training: dict[str, Any]) -> Path:
    config = {
        "name": "toy",
        "storageRoot": str(storage),
        "spec": {
            "recipe": "wrpo" if "wrpo" in training else "fusechat3",
            "target": {"model": str(world["model"])},
            "sources": [{"name": "adder", "model": "unused"}],
            "datasets": [{"name": "toy", "location": "toy.jsonl"}],
            "scoring": {"rewardModel": {"model": str(world["reward"])}},
            "training": training,
        },
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def install_sft_model(storage: Path, world: dict[str, Path]) -> Path:
    """Put the tiny model where DPO/WRPO look for the SFT output (for tests that skip SFT)."""
    final = RunLayout(storage).final_model("sft")
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(world["model"], final)
    return final


class LogRecorder(TrainerCallback):
    """Keeps every Trainer log and the step each train() call started from."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []
        self.start_steps: list[int] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start_steps.append(state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.logs.append({**logs, "step": state.global_step})

    def series(self, key: str) -> list[float]:
        return [log[key] for log in self.logs if key in log]


def answer_logps(model: Any, tokenizer: Any, prompt: list[dict], answer: list[dict]) -> float:
    """log pi(answer | prompt), summed over the answer's tokens, by a plain forward pass."""
    prompt_ids = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    full_ids = tokenizer.apply_chat_template(prompt + answer, tokenize=True, return_dict=True)
    prompt_ids, full_ids = prompt_ids["input_ids"], full_ids["input_ids"]
    ids = torch.tensor([full_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    logps = torch.log_softmax(logits.float(), dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    return logps[len(prompt_ids) - 1 :].sum().item()


def pair_accuracy(policy_path: Path, ref_path: Path, rows: list[dict[str, Any]]) -> float:
    """Share of pairs whose implicit reward log pi/pi_ref ranks chosen (the first chosen) above rejected."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(policy_path))
    policy = AutoModelForCausalLM.from_pretrained(str(policy_path)).eval()
    ref = AutoModelForCausalLM.from_pretrained(str(ref_path)).eval()
    right = 0
    for row in rows:
        chosen = row["chosen"][0] if isinstance(row["chosen"][0], list) else row["chosen"]
        ratio = {
            name: answer_logps(policy, tokenizer, row["prompt"], answer)
            - answer_logps(ref, tokenizer, row["prompt"], answer)
            for name, answer in (("chosen", chosen), ("rejected", row["rejected"]))
        }
        right += ratio["chosen"] > ratio["rejected"]
    return right / len(rows)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread when other work shares the 2 cores; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
