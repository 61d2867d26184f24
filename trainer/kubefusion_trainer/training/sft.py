"""SFT: trl's SFTTrainer on the best answers, loss on assistant tokens only.

assistant_only_loss relies on {% generation %} markers in the chat template (the tiny tokenizer's has
them; spec.target.chatTemplate can supply one for a model whose template lacks them).
"""

from __future__ import annotations

from typing import Any

from kubefusion_trainer.config import SftConfig
from kubefusion_trainer.training.runner import StageContext, model_init_kwargs


def build_sft_trainer(ctx: StageContext) -> Any:
    from trl import SFTConfig, SFTTrainer

    hp = ctx.hp
    assert isinstance(hp, SftConfig)
    args = SFTConfig(
        **ctx.args,
        assistant_only_loss=True,
        packing=hp.packing,
        model_init_kwargs=model_init_kwargs(ctx.on_gpu),
    )
    return SFTTrainer(
        model=str(ctx.model_path),
        args=args,
        train_dataset=ctx.dataset,
        processing_class=ctx.tokenizer,
        callbacks=ctx.callbacks,
    )
