"""prepare reads s3:// datasets from a real S3-compatible server (moto in server mode, on 127.0.0.1) with the
credentials and endpoint a storageSecret puts in the environment."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubefusion_trainer.config import DatasetConfig, RunConfig
from kubefusion_trainer.dataprep.loading import DatasetLoadError, iter_rows
from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.shards import read_jsonl
from kubefusion_trainer.stages import prepare

pytestmark = pytest.mark.integration

ROWS = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(12)]
KEY_ID, SECRET = "AKIAKUBEFUSIONTEST", "kubefusion-test-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A moto S3 server over HTTP with a bucket holding one JSONL file and a prefix of two files."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="prompts")
        body = "".join(json.dumps(r) + "\n" for r in ROWS)
        client.put_object(Bucket="prompts", Key="math/addition.jsonl", Body=body.encode())
        import pyarrow as pa
        import pyarrow.parquet as pq

        first = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(ROWS[:5]), first)
        client.put_object(Bucket="prompts", Key="sharded/part-0.parquet", Body=first.getvalue())
        rest = "".join(json.dumps(r) + "\n" for r in ROWS[5:]) + "not json\n"
        client.put_object(Bucket="prompts", Key="sharded/part-1.jsonl", Body=rest.encode())
        yield endpoint
    finally:
        server.stop()


@pytest.fixture()
def storage_secret_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """What spec.credentials.storageSecret's keys become in a stage pod (envFrom)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()  # no client built with another test's environment
    return s3_server


def dataset(location: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "addition",
        "location": location,
        "domain": "math",
        "fields": {"prompt": "prompt", "answer": "answer"},
        **extra,
    }


def test_prepare_reads_an_s3_jsonl_file(storage_secret_env: str, tmp_path: Path) -> None:
    run = RunConfig.model_validate(
        {
            "name": "s3-run",
            "storageRoot": str(tmp_path / "store"),
            "spec": {
                "target": {"model": "t"},
                "sources": [{"name": "a", "model": "m-a"}],
                "datasets": [dataset("s3://prompts/math/addition.jsonl")],
                "scoring": {"rewardModel": {"model": "r"}},
            },
        }
    )
    record = prepare.run_prepare(run)
    assert record["prompts"] == len(ROWS)
    prompts = read_jsonl(RunLayout(run.storage_root).prompts_file("addition"))
    assert [p["gold_answer"] for p in prompts] == [r["answer"] for r in ROWS]
    assert prompts[3]["messages"] == [{"role": "user", "content": "What is 3 + 3?"}]


def test_an_s3_prefix_is_read_in_name_order_parquet_and_jsonl(storage_secret_env: str) -> None:
    rows = list(iter_rows(DatasetConfig.model_validate(dataset("s3://prompts/sharded/")), "/nowhere"))
    good = [(i, r) for i, r in rows if isinstance(r, dict)]
    assert [r["prompt"] for _, r in good] == [r["prompt"] for r in ROWS]
    assert [i for i, _ in rows] == list(range(len(ROWS) + 1))  # the broken line keeps its index
    assert not isinstance(rows[-1][1], dict)


def test_missing_objects_and_buckets_name_the_location(storage_secret_env: str) -> None:
    missing = DatasetConfig.model_validate(dataset("s3://prompts/math/nothing.jsonl"))
    with pytest.raises(DatasetLoadError, match=r"s3://prompts/math/nothing.jsonl not found"):
        list(iter_rows(missing, "/nowhere"))
    absent = DatasetConfig.model_validate(dataset("s3://no-such-bucket/a.jsonl"))
    with pytest.raises(DatasetLoadError, match="no-such-bucket"):
        list(iter_rows(absent, "/nowhere"))
