"""Checkpoint completeness, resume selection and atomic publication of the final model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from kubefusion_trainer.training.checkpoints import (
    MARKER,
    CheckpointMarkerCallback,
    latest_complete_checkpoint,
    list_checkpoints,
    publish_directory,
    remove_incomplete_checkpoints,
)


def _checkpoint(root: Path, step: int, complete: bool) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if complete:
        (path / MARKER).write_text("{}")
    return path


def test_latest_complete_checkpoint_skips_unfinished_saves(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 5, True)
    ten = _checkpoint(tmp_path, 10, True)
    _checkpoint(tmp_path, 15, False)  # the process died while writing this one
    (tmp_path / "runs").mkdir()
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_complete_checkpoint(tmp_path) == ten
    assert latest_complete_checkpoint(tmp_path / "absent") is None
    # steps sort numerically, not as text
    hundred = _checkpoint(tmp_path, 100, True)
    assert latest_complete_checkpoint(tmp_path) == hundred


def test_remove_incomplete_checkpoints_keeps_complete_ones(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 5, True)
    partial = _checkpoint(tmp_path, 15, False)
    assert remove_incomplete_checkpoints(tmp_path) == [partial]
    assert [step for step, _ in list_checkpoints(tmp_path)] == [5]


def test_marker_callback_marks_only_the_saved_step(tmp_path: Path) -> None:
    saved = _checkpoint(tmp_path, 4, False)
    args = SimpleNamespace(output_dir=str(tmp_path))
    CheckpointMarkerCallback().on_save(args, SimpleNamespace(global_step=4, is_world_process_zero=True), None)
    assert (saved / MARKER).is_file()
    other = _checkpoint(tmp_path, 8, False)
    CheckpointMarkerCallback().on_save(
        args, SimpleNamespace(global_step=8, is_world_process_zero=False), None
    )
    assert not (other / MARKER).exists()  # only rank 0 writes the marker


def test_publish_directory_replaces_the_old_final_whole(tmp_path: Path) -> None:
    final = tmp_path / "train" / "final"
    staging = tmp_path / "train" / ".final.staging"
    staging.mkdir(parents=True)
    (staging / "config.json").write_text("new")
    publish_directory(staging, final)
    assert (final / "config.json").read_text() == "new" and not staging.exists()

    staging.mkdir()
    (staging / "config.json").write_text("newer")
    publish_directory(staging, final)
    assert (final / "config.json").read_text() == "newer"
    assert sorted(p.name for p in final.parent.iterdir()) == ["final"]  # no leftovers
