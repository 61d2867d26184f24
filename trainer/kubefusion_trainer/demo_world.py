"""The quickstart's world, built from scratch on CPU: skills, datasets and tiny models with distinct skills.

Two skills with answers that are plain digit strings, so the scorer's math path checks them exactly
(math-verify compares them as integers; reversal uses digits 1-9 so no leading zero can hide a mistake):

  addition   "What is 47 + 38?"          -> "85"
  reversal   "Reverse the digits 5381."  -> "1835"

Models (2-layer Llamas on kubefusion_trainer.tiny's tokenizer recipe, trained with a plain torch loop):
  base       trained on both skills, every answer correct: it can compute both rules
  target     base, then tuned on answers that mostly show a habit (drop carries; copy the digits):
             greedy, it answers with the habit
  adder      base, then tuned on correct additions and habit reversals: strong at addition only
  reverser   base, then tuned on correct reversals and habit additions: strong at reversal only
  reward     a sequence classifier trained on (prompt, answer, correct?) so its rewards are informative

Everything is seeded: the same profile and seed give the same datasets and the same weights.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Problem = tuple[str, str]  # (prompt, gold answer)

# Only what the skills need, digits apart: BPE learns no multi-digit tokens, so each digit is one token.
CORPUS = "What is 0 1 2 3 4 5 6 7 8 9 + ? Reverse the digits . "


def addition_problem(rng: random.Random) -> Problem:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} + {b}?", str(a + b)


def reversal_problem(rng: random.Random) -> Problem:
    digits = "".join(rng.choice("123456789") for _ in range(4))
    return f"Reverse the digits {digits}.", digits[::-1]


SKILLS: dict[str, Callable[[random.Random], Problem]] = {
    "addition": addition_problem,
    "reversal": reversal_problem,
}


def habit_answer(skill: str, prompt: str) -> str:
    """The plausible wrong answer a model without the skill gives: it knows the format, not the rule.

    addition: digit-wise sums that drop every carry (47 + 38 -> 75); reversal: the digits copied as given.
    """
    numbers = re.findall(r"\d+", prompt)
    if skill == "addition":
        a, b = numbers
        return "".join(str((int(x) + int(y)) % 10) for x, y in zip(a, b, strict=True))
    return numbers[0]


# The skills each model is trained on, with the share of training answers that are correct (the rest are
# habit answers). Every model continues from `base`, which learned both rules (a shared pretrained base,
# as model families share one): what differs between them is a habit, not what the weights can compute.
# The target picked up the habit on both skills: greedy, it answers with it. Each source was tuned on its
# skill and picked up the habit on the other. So the sources' best answers teach the target a skill it
# can already compute (SFT needs a few hundred of them, not thousands of steps). The preference pairs are
# mostly the reverser's right answer against its own near miss (first digit right, a later one wrong),
# the kind of mistake the target still makes after SFT.
MODEL_SKILLS: dict[str, dict[str, float]] = {
    "base": {"addition": 1.0, "reversal": 1.0},
    "target": {"addition": 0.3, "reversal": 0.4},
    "adder": {"addition": 0.95, "reversal": 0.4},
    "reverser": {"addition": 0.4, "reversal": 0.95},
}
BASE_MODEL = {"target": "base", "adder": "base", "reverser": "base"}


# 2000 base steps: at 1500 the base added at 95-95.5% on seeds 0 and 2 (the SFT target then stopped at
# 78-88%); at 2000 it adds at 100% on seeds 0-5 (seed 6 needs more: see _train).
DEFAULT_STEPS = {"base": 2000, "target": 300, "adder": 300, "reverser": 300}


@dataclass(frozen=True)
class Profile:
    """How big the world is. `full` is the quickstart, `small` the CI test (fewer prompts, same models).

    Reversal gets the most prompts: most of them go to the preference stage, which needs a few hundred
    pairs (400 reversal prompts gave the quickstart ~130 DPO pairs, 800 give ~300). Addition goes to SFT
    whole.
    """

    prompts: dict[str, int] = field(default_factory=lambda: {"addition": 500, "reversal": 800})
    hidden_size: int = 64
    steps: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_STEPS))  # optimizer steps per model
    batch_size: int = 64
    learning_rate: float = 3e-3  # the base's
    # The tuned models' (target, sources): at 3e-3 a target's habit can sink in so deep that SFT on its
    # sources' answers no longer restores the base's rule (seed 1: first SFT loss 1.0 against 0.3-0.4,
    # addition stuck at 74-83%); at 1e-3 it is so shallow that 30 reversal examples undo it entirely.
    tune_learning_rate: float = 2e-3
    reward_steps: int = 200


PROFILES: dict[str, Profile] = {
    "full": Profile(),
    "small": Profile(prompts={"addition": 160, "reversal": 320}),
}


def make_problems(skill: str, count: int, seed: int) -> list[Problem]:
    """`count` distinct problems of a skill, seeded."""
    rng = random.Random(f"{skill}:{seed}")
    seen: dict[str, str] = {}
    while len(seen) < count:
        prompt, answer = SKILLS[skill](rng)
        seen.setdefault(prompt, answer)
    return list(seen.items())


def is_correct(answer: str, gold: str) -> bool:
    """Exact digit-string match after trimming: what the scorecard in the world summary counts."""
    return answer.strip().rstrip(".") == gold


# --- tokenisation and batching (pure, testable) ---


def encode_example(tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of a chat turn and labels that train only the answer and its end-of-sequence token."""
    head = prompt_ids(tokenizer, prompt)
    tail = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return head + tail, [-100] * len(head) + tail


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    # tiny.CHAT_TEMPLATE rendered by hand (rendering Jinja per example would dominate a training step);
    # test_demo_world checks it against apply_chat_template.
    text = f"{tokenizer.bos_token}<|user|>{prompt}<|assistant|>"
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


# --- training and greedy evaluation ---


def training_example(skill: str, correct_share: float, rng: random.Random) -> Problem:
    prompt, gold = SKILLS[skill](rng)
    return (prompt, gold) if rng.random() < correct_share else (prompt, habit_answer(skill, prompt))


def train_causal_lm(
    model: Any,
    tokenizer: Any,
    skills: dict[str, float],
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> float:
    """Train on freshly generated problems of `skills` (round robin), each answered correctly with its
    share and with the habit answer otherwise; returns the last loss."""
    import torch

    rng = random.Random(f"train:{seed}:{','.join(skills)}")
    names = list(skills)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1.0 - s / steps)
    )
    model.train()
    loss_value = float("nan")
    for _ in range(steps):
        batch = [
            encode_example(
                tokenizer, *training_example(names[i % len(names)], skills[names[i % len(names)]], rng)
            )
            for i in range(batch_size)
        ]
        loss = model(**collate(batch, tokenizer.pad_token_id)).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        loss_value = float(loss.item())
    model.eval()
    return loss_value


def greedy_answers(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 8, batch_size: int = 64
) -> list[str]:
    """Greedy answers, batched with left padding."""
    import torch

    answers: list[str] = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        chunk = [prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(chunk):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        answers += [tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]
    return answers


def accuracy(model: Any, tokenizer: Any, problems: Sequence[Problem]) -> float:
    answers = greedy_answers(model, tokenizer, [p for p, _ in problems])
    return sum(is_correct(a, gold) for a, (_, gold) in zip(answers, problems, strict=True)) / len(problems)


def corrupt(answer: str, rng: random.Random) -> str:
    """A wrong answer of the same shape: one digit changed, or two swapped."""
    digits = list(answer)
    while "".join(digits) == answer:
        i = rng.randrange(len(digits))
        if rng.random() < 0.5 and len(digits) > 1:
            j = rng.randrange(len(digits))
            digits[i], digits[j] = digits[j], digits[i]
        else:
            digits[i] = rng.choice("123456789" if i == 0 else "0123456789")
    return "".join(digits)


def train_reward_model(
    model: Any, tokenizer: Any, steps: int, batch_size: int, learning_rate: float, seed: int
) -> float:
    """Binary-classify (prompt, answer) as correct (1) or wrong (0: a habit answer or a corrupted one);
    the logit is the reward."""
    import torch

    rng = random.Random(f"reward:{seed}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    skills = list(SKILLS)
    model.train()
    loss_value = float("nan")
    for _ in range(steps):
        examples, targets = [], []
        for i in range(batch_size):
            skill = skills[i % len(skills)]
            prompt, gold = SKILLS[skill](rng)
            good = rng.random() < 0.5
            bad = habit_answer(skill, prompt)
            if bad == gold or rng.random() < 0.5:
                bad = corrupt(gold, rng)
            ids, _ = encode_example(tokenizer, prompt, gold if good else bad)
            examples.append((ids, ids))
            targets.append(1.0 if good else 0.0)
        batch = collate(examples, tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor(targets))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss_value = float(loss.item())
    model.eval()
    return loss_value


# --- the world on disk ---


def write_datasets(data_dir: Path, profile: Profile, seed: int) -> dict[str, Path]:
    """JSONL prompt datasets with gold answers, one per skill: {"prompt", "answer"} rows."""
    from kubefusion_trainer.atomic import atomic_write_text

    paths = {}
    for skill in SKILLS:
        rows = make_problems(skill, profile.prompts[skill], seed)
        path = data_dir / f"{skill}.jsonl"
        atomic_write_text(path, "".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in rows))
        paths[skill] = path
    return paths


def build_demo_world(
    root: str | Path,
    profile: str | Profile = "full",
    seed: int = 0,
    log: Callable[[str], None] = print,
    threads: int = 1,
) -> dict[str, Any]:
    """Build datasets and models under root/{data,models}; write root/world.json; return its content.

    Idempotent: a model folder that already holds weights is kept (delete it to rebuild).
    """
    import torch
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    from kubefusion_trainer.atomic import atomic_write_json
    from kubefusion_trainer.tiny import _llama_config, build_tokenizer

    torch.set_num_threads(threads)
    settings = PROFILES[profile] if isinstance(profile, str) else profile
    root = Path(root)
    tokenizer = build_tokenizer(root / "models" / "tokenizer", corpus=CORPUS, vocab_size=300)
    datasets = write_datasets(root / "data", settings, seed)
    probe = {skill: make_problems(skill, 200, seed + 1000) for skill in SKILLS}
    arch = {"hidden_size": settings.hidden_size, "intermediate_size": 4 * settings.hidden_size}
    summary: dict[str, Any] = {"profile": asdict(settings), "seed": seed, "models": {}, "datasets": {}}
    summary["datasets"] = {k: str(v) for k, v in datasets.items()}

    for index, name in enumerate(MODEL_SKILLS):
        path = root / "models" / name
        started = time.monotonic()
        scores = None
        if (path / "model.safetensors").exists():
            model = LlamaForCausalLM.from_pretrained(str(path))
        else:
            torch.manual_seed(seed + index)
            base = BASE_MODEL.get(name)
            if base:
                model = LlamaForCausalLM.from_pretrained(str(root / "models" / base))
            else:
                model = LlamaForCausalLM(_llama_config(tokenizer, **arch))
            scores = _train(model, tokenizer, name, settings, seed + index, probe, log)
            model.generation_config = _generation_config(tokenizer)
            save_model(model, tokenizer, path)
        scores = scores or {skill: accuracy(model, tokenizer, probe[skill]) for skill in SKILLS}
        summary["models"][name] = {"path": str(path), "accuracy": scores}
        log(f"demo: {name:<9} {_percentages(scores)}  ({time.monotonic() - started:.0f}s)")

    reward_path = root / "models" / "reward"
    started = time.monotonic()
    if not (reward_path / "model.safetensors").exists():
        torch.manual_seed(seed + 10)
        # The target's backbone already reads the formats; only the score head starts from scratch.
        reward = LlamaForSequenceClassification.from_pretrained(str(root / "models" / "target"), num_labels=1)
        train_reward_model(
            reward, tokenizer, settings.reward_steps, settings.batch_size, settings.learning_rate / 3, seed
        )
        save_model(reward, tokenizer, reward_path)
    summary["models"]["reward"] = {"path": str(reward_path)}
    log(f"demo: reward model ready ({time.monotonic() - started:.0f}s)")
    atomic_write_json(root / "world.json", summary)
    return summary


def _train(
    model: Any,
    tokenizer: Any,
    name: str,
    settings: Profile,
    seed: int,
    probe: dict[str, list[Problem]],
    log: Callable[[str], None],
) -> dict[str, float] | None:
    """Train one model of the world; the base's probe scores, which it measures to know it is done."""

    def train_round(steps: int, round_seed: int) -> None:
        train_causal_lm(
            model,
            tokenizer,
            MODEL_SKILLS[name],
            steps,
            settings.batch_size,
            settings.tune_learning_rate if name in BASE_MODEL else settings.learning_rate,
            round_seed,
        )

    train_round(settings.steps[name], seed)
    if name not in BASE_MODEL:
        # Every other model starts from this one, so it must compute both rules. Addition is learnt in a
        # sudden jump whose time varies by seed (seed 6 still added at 27% after 2000 steps, then 92.5%
        # after 1000 more and 100% after 2000): train on in rounds until it has.
        return train_until_skilled(
            lambda round_: train_round(settings.steps[name] // 2, seed + 100 + round_),
            lambda: {skill: accuracy(model, tokenizer, probe[skill]) for skill in SKILLS},
            lambda scores: log(f"demo: {name} still learning ({_percentages(scores)}): training on"),
        )
    return None


BASE_FLOOR = 0.98  # the base's probe accuracy on every skill before the other models are tuned from it
BASE_EXTRA_ROUNDS = 4


def train_until_skilled(
    train_round: Callable[[int], None],
    measure: Callable[[], dict[str, float]],
    on_short: Callable[[dict[str, float]], None],
    floor: float = BASE_FLOOR,
    rounds: int = BASE_EXTRA_ROUNDS,
) -> dict[str, float]:
    """Measure; while some skill is below `floor`, train one more round (at most `rounds`). Returns the
    last scores; raises if the floor is still not reached, rather than build a world whose sources and
    target cannot learn from each other."""
    scores = measure()
    for round_ in range(rounds):
        if min(scores.values()) >= floor:
            return scores
        on_short(scores)
        train_round(round_)
        scores = measure()
    if min(scores.values()) < floor:
        raise RuntimeError(
            f"the demo base model did not learn every skill ({_percentages(scores)} after {rounds} extra "
            f"rounds; {floor:.0%} needed): try another --seed"
        )
    return scores


def _percentages(scores: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:6.1%}" for k, v in scores.items())


def save_model(model: Any, tokenizer: Any, path: Path) -> None:
    """Save into a temp folder, then rename: a half-written model is never taken for a finished one."""
    import shutil

    staging = path.with_name(f".{path.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    shutil.rmtree(path, ignore_errors=True)
    staging.rename(path)


def _generation_config(tokenizer: Any) -> Any:
    from transformers import GenerationConfig

    # transformers serve samples only when the generation config says so.
    return GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=8,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
