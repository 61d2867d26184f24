"""WRPO (weighted-reward preference optimisation) as a subclass of trl's DPOTrainer.

Each row has two chosen answers, the best source answer y_ws and the best target answer y_wt, and one
rejected answer y_l. All three go through one concatenated forward pass (batch = [y_ws; y_wt; y_l]) of
the policy and one of the reference model; the loss is losses.wrpo_loss with alpha from losses.alpha_at
(static, or rising linearly from 0 to `alpha` over the training steps, the WRPO repo's default).
Everything else (reference model, DeepSpeed, checkpoints, logging) is DPOTrainer's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset
from transformers.data.data_collator import DataCollatorMixin
from trl import DPOConfig, DPOTrainer
from trl.data_utils import _tokenize, common_prefix_length
from trl.trainer.utils import add_fused_lm_head, pad

from kubefusion_trainer.training.losses import alpha_at, chosen_nll, wrpo_loss

ANSWERS = ("chosen_source", "chosen_target", "rejected")


@dataclass
class WRPOConfig(DPOConfig):
    """DPOConfig plus WRPO's fusion weight. `beta` and the rest keep DPOConfig's meaning."""

    alpha: float = field(
        default=0.1, metadata={"help": "Weight of the source's chosen answer (max when linear)."}
    )
    alpha_schedule: str = field(
        default="linear", metadata={"help": "linear: 0 -> alpha over training; static: alpha throughout."}
    )
    sft_loss_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the chosen answers' mean token NLL (alpha-weighted), added to the loss."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.precompute_ref_log_probs:
            raise ValueError(
                "WRPO computes reference log-probs on the fly; precompute_ref_log_probs is not supported"
            )
        if self.loss_type != ["sigmoid"]:
            raise ValueError("WRPO has its own loss; leave loss_type at its default")


@dataclass
class DataCollatorForWRPO(DataCollatorMixin):
    """Pads [prompt+y_ws; prompt+y_wt; prompt+y_l] into one batch of 3B rows with a completion mask."""

    pad_token_id: int
    max_length: int | None = None
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        input_ids, completion_mask = [], []
        for answer in ANSWERS:
            for example in examples:
                ids = example["prompt_ids"] + example[f"{answer}_ids"]
                mask = [0] * len(example["prompt_ids"]) + [1] * len(example[f"{answer}_ids"])
                if self.max_length is not None:  # keep the start: the prompt stays whole
                    ids, mask = ids[: self.max_length], mask[: self.max_length]
                input_ids.append(torch.tensor(ids))
                completion_mask.append(torch.tensor(mask, dtype=torch.long))
        attention = [torch.ones_like(ids) for ids in input_ids]
        return {
            "input_ids": pad(input_ids, padding_value=self.pad_token_id, padding_side="right"),
            "attention_mask": pad(attention, padding_value=0, padding_side="right"),
            "completion_mask": pad(completion_mask, padding_value=0, padding_side="right"),
        }


def tokenize_wrpo_row(row: dict[str, Any], tokenizer: Any) -> dict[str, list[int]]:
    """prompt_ids plus the three answers' ids, split where prompt and prompt+answer diverge (as trl does)."""
    answers = {
        "chosen_source": row["chosen"][0],
        "chosen_target": row["chosen"][1],
        "rejected": row["rejected"],
    }
    tools = row.get("tools")
    kwargs = {"tools": json.loads(tools) if isinstance(tools, str) else tools}
    prompt_ids = _tokenize(tokenizer, row["prompt"], add_generation_prompt=True, **kwargs)["input_ids"]
    full = {
        name: _tokenize(tokenizer, row["prompt"] + msgs, **kwargs)["input_ids"]
        for name, msgs in answers.items()
    }
    prompt_len = min(common_prefix_length(prompt_ids, ids) for ids in full.values())
    out = {"prompt_ids": prompt_ids[:prompt_len]}
    out.update({f"{name}_ids": ids[prompt_len:] for name, ids in full.items()})
    return out


class WRPOTrainer(DPOTrainer):
    """DPOTrainer whose batches carry two chosen answers and whose loss is WRPO's."""

    _tag_names = ["trl", "wrpo", "kubefusion"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        training_args = kwargs.get("args")
        if not isinstance(training_args, WRPOConfig):
            raise TypeError("WRPOTrainer needs args=WRPOConfig(...)")
        if kwargs.get("data_collator") is None:
            tokenizer = kwargs["processing_class"]
            kwargs["data_collator"] = DataCollatorForWRPO(
                pad_token_id=tokenizer.pad_token_id, max_length=training_args.max_length
            )
        super().__init__(*args, **kwargs)
        # DPOTrainer's fused LM head also computes entropy, mean logits and top-1 hits for its own metrics;
        # WRPO reads log-probs only, so re-patch the policy's head to skip that per-token work.
        add_fused_lm_head(self.model, outputs=("log_probs",))

    def _prepare_dataset(
        self, dataset: Dataset, processing_class: Any, args: Any, dataset_name: str
    ) -> Dataset:
        if "prompt_ids" in dataset.column_names:  # already tokenized
            return dataset
        dataset = dataset.map(
            tokenize_wrpo_row,
            fn_kwargs={"tokenizer": processing_class},
            remove_columns=dataset.column_names,
            desc=f"Tokenizing {dataset_name} WRPO dataset",
        )
        if (
            args.max_length is not None
        ):  # a prompt that fills max_length leaves no answer tokens to learn from
            dataset = dataset.filter(lambda row: len(row["prompt_ids"]) < args.max_length)
        return dataset

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["prompt_ids"] + [f"{answer}_ids" for answer in ANSWERS]  # type: ignore[assignment]

    def current_alpha(self) -> float:
        args: WRPOConfig = self.args  # type: ignore[assignment]
        return alpha_at(self.state.global_step, self.state.max_steps, args.alpha, args.alpha_schedule)  # type: ignore[arg-type]

    def _sequence_logps(self, model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's summed answer log-prob, and its number of answer tokens."""
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            labels=labels,
            use_cache=False,
            fused_lm_head=True,
        )
        seq_len = completion_mask.size(1) - 1
        # The fused head gives 0 where the label is -100, so the sum covers the answer tokens only.
        return outputs.log_probs[:, -seq_len:].sum(dim=1), completion_mask[:, 1:].sum(dim=1)

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        mode = "train" if model.training else "eval"
        logps, tokens = self._sequence_logps(model, inputs)
        with torch.no_grad():
            ref_logps, _ = self._sequence_logps(self.ref_model, inputs)
        source, target, rejected = (logps - ref_logps).chunk(3, dim=0)
        alpha = self.current_alpha()
        out = wrpo_loss(source, target, rejected, beta=self.beta, alpha=alpha)
        loss = out.losses.mean()

        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]
        metrics["alpha"].append(alpha)
        weight = self.args.sft_loss_weight  # type: ignore[attr-defined]
        if weight:
            nll = chosen_nll(logps, tokens, alpha)
            loss = loss + weight * nll
            metrics["sft_loss"].append(gather(nll.detach()).mean().item())
        metrics["rewards/chosen_source"].append(gather(out.source_chosen_rewards).mean().item())
        metrics["rewards/chosen_target"].append(gather(out.target_chosen_rewards).mean().item())
        metrics["rewards/chosen"].append(gather(out.chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(out.rejected_rewards).mean().item())
        metrics["rewards/margins"].append(gather(out.margins).mean().item())
        metrics["rewards/accuracies"].append(gather(out.accuracies).mean().item())
        for name, values in zip(ANSWERS, logps.detach().chunk(3, dim=0), strict=True):
            metrics[f"logps/{name}"].append(gather(values).mean().item())
        if return_outputs:
            return loss, {"chosen_rewards": out.chosen_rewards, "rejected_rewards": out.rejected_rewards}
        return loss


def build_wrpo_trainer(ctx: Any) -> WRPOTrainer:
    """The WRPO stage's trainer from a runner.StageContext (spec.training.wrpo)."""
    from kubefusion_trainer.config import WrpoConfig
    from kubefusion_trainer.training.runner import model_init_kwargs

    hp = ctx.hp
    assert isinstance(hp, WrpoConfig)
    args = WRPOConfig(
        **ctx.args,
        beta=hp.beta,
        alpha=hp.alpha,
        alpha_schedule=hp.alpha_schedule,
        sft_loss_weight=hp.sft_loss_weight,
        model_init_kwargs=model_init_kwargs(ctx.on_gpu),
    )
    return WRPOTrainer(
        model=str(ctx.model_path),
        args=args,
        train_dataset=ctx.dataset,
        processing_class=ctx.tokenizer,
        callbacks=ctx.callbacks,
    )
