"""`kubefusion stage NAME --config FILE ...`: the commands stage pods and the local runner execute."""

from __future__ import annotations

import importlib
import sys

# Stage name -> module with main(argv) -> int. Modules load only when their stage runs.
STAGES = {
    "prepare": "kubefusion_trainer.stages.prepare",
    "sample": "kubefusion_trainer.stages.sample",
    "score": "kubefusion_trainer.stages.score",
    "verify-code": "kubefusion_trainer.stages.verify_code",
    "build": "kubefusion_trainer.stages.build",
    "train": "kubefusion_trainer.training.cli",
    "evaluate": "kubefusion_trainer.stages.evaluate",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        print(f"usage: kubefusion stage {{{','.join(STAGES)}}} --config FILE [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(STAGES[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
