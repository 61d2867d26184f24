"""A run on Kubernetes needs storage.pvc; the same spec stays valid for `kubefusion run` on one machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubefusion_operator.validation import InvalidFusionRun, validate_document

REPO = Path(__file__).resolve().parents[3]


def quickstart() -> dict:
    return yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())


@pytest.mark.parametrize("storage", [{"uri": "runs/quickstart"}, {"uri": "s3://bucket/runs"}, {}])
def test_cluster_runs_need_a_pvc(storage: dict) -> None:
    doc = quickstart()
    doc["spec"]["storage"] = storage
    validate_document(doc)  # fine on one machine
    with pytest.raises(InvalidFusionRun) as info:
        validate_document(doc, cluster=True)
    [error] = info.value.errors
    assert error.path == "spec.storage.pvc"
    assert "ReadWriteMany PersistentVolumeClaim" in error.message
    if storage:
        assert repr(storage["uri"]) in error.message
    doc["spec"]["storage"] = {"pvc": "runs"}
    assert validate_document(doc, cluster=True).spec.storage.pvc == "runs"


def test_stage_deadlines_name_stages_of_the_run() -> None:
    doc = quickstart()
    doc["spec"]["stageDeadlineSeconds"] = {"score": 3600, "wrpo": 3600, "serve-sources": 600}
    with pytest.raises(InvalidFusionRun) as info:
        validate_document(doc)
    assert sorted(e.path for e in info.value.errors) == [
        "spec.stageDeadlineSeconds.serve-sources",
        "spec.stageDeadlineSeconds.wrpo",
    ]


def test_source_names_do_not_take_an_evaluation_servers_name() -> None:
    doc = quickstart()
    doc["spec"]["sources"][0]["name"] = "eval-sft"
    doc["spec"]["datasets"][0]["sources"] = None
    with pytest.raises(InvalidFusionRun) as info:
        validate_document(doc)
    assert [e.path for e in info.value.errors] == ["spec.sources[0].name"]


def test_kubefusion_validate_cluster_checks_what_the_operator_checks(capsys: pytest.CaptureFixture) -> None:
    from kubefusion_operator.cli import main

    quickstart_file = str(REPO / "examples" / "quickstart.yaml")
    assert main(["validate", "-f", quickstart_file]) == 0
    assert main(["validate", "--cluster", "-f", quickstart_file]) == 1
    assert "spec.storage.pvc: a run on Kubernetes needs" in capsys.readouterr().err
    assert main(["validate", "--cluster", "-f", str(REPO / "examples" / "wrpo-llama3-8b.yaml")]) == 0
