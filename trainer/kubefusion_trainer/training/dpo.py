"""DPO: trl's DPOTrainer from the SFT model, which is also the (frozen) reference.

loss_type sigmoid is standard DPO; sigmoid_norm divides each answer's log-ratio by its length
(FuseChat-3.0's setting for Llama, with beta 10). precomputeRefLogProbs runs the reference once over
the data up front, so it is not kept in memory during training.
"""

from __future__ import annotations

from typing import Any

from kubefusion_trainer.config import DpoConfig
from kubefusion_trainer.training.runner import StageContext, model_init_kwargs


def build_dpo_trainer(ctx: StageContext) -> Any:
    from trl import DPOConfig, DPOTrainer

    hp = ctx.hp
    assert isinstance(hp, DpoConfig)
    args = DPOConfig(
        **ctx.args,
        beta=hp.beta,
        loss_type=[hp.loss_type, "sft"] if hp.sft_loss_weight else [hp.loss_type],
        loss_weights=[1.0, hp.sft_loss_weight] if hp.sft_loss_weight else None,
        precompute_ref_log_probs=hp.precompute_ref_log_probs,
        model_init_kwargs=model_init_kwargs(ctx.on_gpu),
    )
    return DPOTrainer(
        model=str(ctx.model_path),
        args=args,
        train_dataset=ctx.dataset,
        processing_class=ctx.tokenizer,
        callbacks=ctx.callbacks,
    )
