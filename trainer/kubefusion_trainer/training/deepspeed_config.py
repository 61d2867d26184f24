"""The DeepSpeed config a training stage runs with, generated from the spec (pure).

Batch sizes and gradient accumulation are "auto": the HF Trainer fills them in from its own arguments,
which come from the spec and the actual world size, so one file is right for any number of processes
(a hard-coded train_batch_size would break as soon as the topology changes).
"""

from __future__ import annotations

from typing import Any


def build_deepspeed_config(zero_stage: int, bf16: bool) -> dict[str, Any] | None:
    """ZeRO-`zero_stage` config; None for stage 0 (plain DDP or a single process, no DeepSpeed).

    bf16 is on for GPUs and off for CPU runs (fp32: CPU bf16 kernels are slow and imprecise).
    """
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zeroStage must be 0, 1, 2 or 3, got {zero_stage}")
    if zero_stage == 0:
        return None
    zero: dict[str, Any] = {
        "stage": zero_stage,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if zero_stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                # The final save_pretrained needs whole weights on rank 0, not shards.
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    else:
        zero["allgather_bucket_size"] = "auto"
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,  # the Trainer logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }
