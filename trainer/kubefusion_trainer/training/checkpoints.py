"""Checkpoints a crash cannot leave half-usable, and the atomic final model.

The HF Trainer writes checkpoint-<step>/ in place, file by file. After every process has finished
writing one, rank 0 drops a COMPLETE marker into it (written atomically); on restart only marked
checkpoints count, and unmarked ones (a crash mid-save) are removed so the Trainer's rotation and
resume never see them.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubefusion_trainer.atomic import atomic_write_json

MARKER = "COMPLETE"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in directory.iterdir() if p.is_dir()]
    return sorted((step, p) for step, p in found if step is not None)


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / MARKER).is_file()


def latest_complete_checkpoint(directory: Path) -> Path | None:
    """The highest-step checkpoint that carries the completion marker."""
    complete = [p for _, p in list_checkpoints(directory) if is_complete(p)]
    return complete[-1] if complete else None


def remove_incomplete_checkpoints(directory: Path) -> list[Path]:
    """Delete checkpoints without a marker (interrupted saves); rank 0 only. Returns what was removed."""
    removed = []
    for _, path in list_checkpoints(directory):
        if not is_complete(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class CheckpointMarkerCallback(TrainerCallback):
    """Marks checkpoint-<step> complete once every rank has written its part (Trainer calls on_save after)."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        _barrier()  # ZeRO-3 ranks write their own shards: wait for all of them
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                _fsync_tree(checkpoint)
                atomic_write_json(checkpoint / MARKER, {"step": state.global_step})
        _barrier()


def _fsync_tree(directory: Path) -> None:
    """Flush the checkpoint's files to disk before the marker vouches for them."""
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def publish_directory(staging: Path, final: Path) -> None:
    """Rename a fully written `staging` directory to `final`, replacing an older one without a gap
    in which neither a complete old nor a complete new directory exists under a known name."""
    _fsync_tree(staging)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        retired = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, retired)
        os.replace(staging, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, final)
