"""The chart's monitoring and RBAC fit the stage pods the operator really renders (its pure builders)."""

from __future__ import annotations

from typing import Any

from packaging_chart import REPO_ROOT, VALUE_SETS, only, render

from kubefusion_operator.planner import plan_tasks
from kubefusion_operator.render.names import RenderContext
from kubefusion_operator.render.task import build_task_children
from kubefusion_operator.validation import load_fusionrun


def _stage_pod_templates() -> list[dict[str, Any]]:
    """Pod templates of every Job and PyTorchJob replica the operator renders for the FuseChat example."""
    run = load_fusionrun(str(REPO_ROOT / "examples" / "fusechat3-llama31-8b.yaml"))
    ctx = RenderContext(
        run.name, "team-a", "uid-1", run.spec, image="ghcr.io/kubefusion/kubefusion-trainer:0.1.0"
    )
    templates = []
    for task in plan_tasks(run.spec):
        for child in build_task_children(ctx, task):
            if child["kind"] == "Job":
                templates.append(child["spec"]["template"])
            elif child["kind"] == "PyTorchJob":
                templates += [r["template"] for r in child["spec"]["pytorchReplicaSpecs"].values()]
    return templates


def _selects(expressions: list[dict[str, Any]], labels: dict[str, str]) -> bool:
    for expression in expressions:
        assert expression["operator"] in ("Exists", "DoesNotExist"), expression  # all the chart uses
        if (expression["key"] in labels) != (expression["operator"] == "Exists"):
            return False
    return True


def test_the_pod_monitor_scrapes_every_stage_pods_metrics_port() -> None:
    monitor = only(render(VALUE_SETS["monitoring"]), "PodMonitor")
    port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    templates = _stage_pod_templates()
    assert templates
    for template in templates:
        labels = template["metadata"]["labels"]
        if "kubefusion.dev/sandbox" in labels:  # code answers' sandbox pods: no metrics, no ingress
            assert not _selects(monitor["spec"]["selector"]["matchExpressions"], labels), labels
            continue
        assert _selects(monitor["spec"]["selector"]["matchExpressions"], labels), labels
        ports = {p.get("name") for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert port in ports, f"no container port named {port!r} in {template['metadata']['labels']}"
        assert set(monitor["spec"]["podTargetLabels"]) <= set(labels)


def test_stage_pods_do_not_look_like_the_operator() -> None:
    """The chart's Service selects the operator pod only, never a stage pod of a run."""
    selector = only(render({}), "Service")["spec"]["selector"]
    for template in _stage_pod_templates():
        assert not selector.items() <= template["metadata"]["labels"].items()
