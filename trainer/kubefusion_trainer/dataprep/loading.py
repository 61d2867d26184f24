"""Load a dataset's raw rows, wherever it lives.

Locations (DatasetConfig.location):
  hf://org/name            the Hugging Face hub via datasets.load_dataset (configName, split, token from HF_TOKEN)
  s3://... gs://...        an object-store JSONL/Parquet file, or a prefix holding such files (name order), read
                           with fsspec (s3fs / gcsfs, in the `train` extra the trainer image installs).
                           Credentials come from the environment (spec.credentials.storageSecret): S3 reads
                           AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION and, for
                           S3-compatible stores (MinIO, Ceph), AWS_ENDPOINT_URL; GCS reads
                           GCS_SERVICE_ACCOUNT_JSON (a key's JSON text) or the pod's workload identity.
  file:///abs/path, a path JSONL (.jsonl/.json), Parquet (.parquet), a datasets save_to_disk folder, or a
                           folder of .jsonl/.parquet files (read in name order)
A relative path resolves against the current directory first, then the run's storage root.

Rows come back as (row_index, row) where row is a dict, or a RowError for a JSONL line that is not a JSON
object, so the caller can report it with its index instead of failing the whole dataset.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubefusion_trainer.config import DatasetConfig


class DatasetLoadError(RuntimeError):
    """The dataset cannot be read at all (missing path, unknown format, hub error)."""


@dataclass(frozen=True)
class RowError:
    reason: str


Row = dict[str, Any] | RowError


def resolve_local(location: str, storage_root: str | Path) -> Path:
    """Relative paths: the current directory first, then the storage root."""
    path = Path(location.removeprefix("file://"))
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, Path(storage_root) / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetLoadError(f"dataset location {location!r} not found (tried {tried})")


def iter_rows(dataset: DatasetConfig, storage_root: str | Path) -> Iterator[tuple[int, Row]]:
    """(row_index, row or RowError) for every row of the dataset's split, in order."""
    location = dataset.location
    if location.startswith("hf://"):
        yield from enumerate(_load_hub(dataset))
    elif location.startswith(("s3://", "gs://")):
        yield from _load_remote(dataset)
    else:
        yield from _load_local(resolve_local(location, storage_root), dataset.split)


def _load_hub(dataset: DatasetConfig) -> Any:
    import datasets

    repo = dataset.location.removeprefix("hf://").strip("/")
    try:
        return datasets.load_dataset(
            repo, dataset.config_name, split=dataset.split, token=os.environ.get("HF_TOKEN") or None
        )
    except Exception as exc:  # the hub raises many kinds; the message is what the user needs
        raise DatasetLoadError(f"dataset {dataset.name}: cannot load {dataset.location}: {exc}") from exc


def storage_options(location: str) -> dict[str, Any]:
    """fsspec options for an object-store URL, from the environment (never from the spec)."""
    if location.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    if location.startswith("gs://") and os.environ.get("GCS_SERVICE_ACCOUNT_JSON"):
        return {"token": json.loads(os.environ["GCS_SERVICE_ACCOUNT_JSON"])}
    return {}


def _load_remote(dataset: DatasetConfig) -> Iterator[tuple[int, Row]]:
    location = dataset.location
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(location, **storage_options(location))
        if fs.isdir(path):
            files = sorted(
                p for p in fs.ls(path, detail=False) if p.endswith((".jsonl", ".json", ".parquet"))
            )
            if not files:
                raise DatasetLoadError(
                    f"dataset {dataset.name}: no .jsonl, .json or .parquet files under {location}"
                )
        elif fs.exists(path):
            files = [path]
        else:
            raise DatasetLoadError(f"dataset {dataset.name}: {location} not found")
    except ImportError as exc:
        raise DatasetLoadError(
            f"dataset {dataset.name}: {location} needs {exc.name or 's3fs/gcsfs'} (pip install s3fs gcsfs; "
            "the trainer image has both)"
        ) from exc
    except DatasetLoadError:
        raise
    except Exception as exc:  # botocore, gcsfs and HTTP errors: the message names the cause
        raise DatasetLoadError(f"dataset {dataset.name}: cannot read {location}: {exc}") from exc
    offset = 0
    for file in files:
        count = 0
        with fs.open(file, "rb") as handle:
            if file.endswith(".parquet"):
                import pyarrow.parquet as pq

                rows = enumerate(pq.read_table(handle).to_pylist())
            else:
                rows = _jsonl_rows(io.TextIOWrapper(handle, encoding="utf-8", errors="replace"))
            for index, row in rows:
                yield offset + index, row
                count = index + 1
        offset += count


def _load_local(path: Path, split: str) -> Iterator[tuple[int, Row]]:
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            yield from enumerate(_load_from_disk(path, split))
            return
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".parquet"))
        if not files:
            raise DatasetLoadError(f"{path}: no .jsonl, .json or .parquet files and not a datasets folder")
        offset = 0
        for file in files:
            count = 0
            for index, row in _load_file(file):
                yield offset + index, row
                count = index + 1
            offset += count
        return
    yield from _load_file(path)


def _load_file(path: Path) -> Iterator[tuple[int, Row]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise DatasetLoadError(f"{path}: not a readable Parquet file: {exc}") from exc
        yield from enumerate(table.to_pylist())
    elif path.suffix in (".jsonl", ".json"):
        yield from _read_jsonl_rows(path)
    else:
        raise DatasetLoadError(
            f"{path}: unknown format (expected .jsonl, .json, .parquet or a datasets folder)"
        )


def _read_jsonl_rows(path: Path) -> Iterator[tuple[int, Row]]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        yield from _jsonl_rows(handle)


def _jsonl_rows(handle: Iterable[str]) -> Iterator[tuple[int, Row]]:
    """Row i is the i-th non-blank line; a line that is not a JSON object becomes a RowError."""
    index = 0
    for line in handle:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield index, RowError(f"not JSON ({exc.msg} at column {exc.colno})")
        else:
            yield index, row if isinstance(row, dict) else RowError("not a JSON object")
        index += 1


def _load_from_disk(path: Path, split: str) -> Any:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DatasetLoadError(f"{path}: cannot load datasets folder: {exc}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DatasetLoadError(f"{path}: split {split!r} not found (has {', '.join(loaded)})")
        return loaded[split]
    return loaded
