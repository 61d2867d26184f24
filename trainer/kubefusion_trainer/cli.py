"""`kubefusion stage NAME --config FILE ...`: the commands stage pods and the local runner execute."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

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


ENV_DIR_VARIABLE = "KUBEFUSION_ENV_DIR"


def export_env_dir(environ: dict[str, str] | os._Environ[str] = os.environ) -> list[str]:
    """Each file in $KUBEFUSION_ENV_DIR becomes a variable named after it (a mounted Secret's keys, where
    the pod cannot take envFrom: a TrainJob's trainer). Variables already set win. Returns the names set."""
    folder = environ.get(ENV_DIR_VARIABLE)
    if not folder:
        return []
    names = []
    for path in sorted(Path(folder).iterdir()):
        # A mounted Secret also holds ..data and timestamped folders: only plain files named like variables.
        plain = path.is_file() and not path.name.startswith(".") and path.name.isidentifier()
        if plain and path.name not in environ:
            environ[path.name] = path.read_text(encoding="utf-8")
            names.append(path.name)
    return names


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    export_env_dir()
    if not argv or argv[0] not in STAGES:
        print(f"usage: kubefusion stage {{{','.join(STAGES)}}} --config FILE [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(STAGES[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
