"""`kubefusion stage train --config FILE --stage sft|dpo|wrpo [--metrics-port P]`.

Runs as one process or under torchrun (which reads the Kubeflow PET_* variables); every rank runs the
same command, rank 0 serves the metrics and writes the final model and the completion record.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

STAGES = ("sft", "dpo", "wrpo")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubefusion stage train", description=__doc__)
    p.add_argument("--config", required=True, help="run config file (YAML or JSON)")
    p.add_argument("--stage", required=True, choices=STAGES, help="which training stage to run")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics here (rank 0)")
    return p


def trainer_factory(stage: str) -> Any:
    if stage == "sft":
        from kubefusion_trainer.training.sft import build_sft_trainer

        return build_sft_trainer
    if stage == "dpo":
        from kubefusion_trainer.training.dpo import build_dpo_trainer

        return build_dpo_trainer
    from kubefusion_trainer.training.wrpo import build_wrpo_trainer

    return build_wrpo_trainer


def train(
    config_path: str, stage: str, metrics_port: int | None = None, callbacks: list[Any] | None = None
) -> dict:
    """Load the run config and train one stage; returns the completion record."""
    from kubefusion_trainer.config import load_run_config
    from kubefusion_trainer.training.runner import run_stage

    run = load_run_config(config_path)
    return run_stage(run, stage, trainer_factory(stage), metrics_port=metrics_port, callbacks=callbacks)  # type: ignore[arg-type]


def _leave_process_group() -> None:
    """Shut the process group down cleanly (torchrun and DeepSpeed runs) so ranks exit together."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from pydantic import ValidationError

    from kubefusion_trainer.training.data import DataError

    try:
        record = train(args.config, args.stage, args.metrics_port)
    except (ValidationError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"kubefusion stage train --stage {args.stage}: {exc}", file=sys.stderr)
        return 1
    finally:
        _leave_process_group()
    done = "already complete" if record.get("skipped") else "complete"
    print(f"train-{args.stage} {done}: {record['global_step']} steps, model at {record['final_model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
