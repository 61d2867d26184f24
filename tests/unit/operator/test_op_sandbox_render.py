"""Sandbox pods for code answers: valid objects, the restricted Pod Security profile, nothing secret, no network."""

from __future__ import annotations

import sys
from pathlib import Path

import kubernetes_validate
import pytest

from kubefusion_operator.local.plan import local_steps
from kubefusion_operator.planner import plan_tasks
from kubefusion_operator.render.jobs import build_job
from kubefusion_operator.render.names import RenderContext
from kubefusion_operator.render.task import build_task_children
from kubefusion_operator.validation import load_fusionrun

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "unit" / "packaging"))
from test_chart_security import restricted_violations  # noqa: E402 - the profile's checks, in one place

CODE_EXAMPLE = REPO / "examples" / "fusechat3-llama31-8b.yaml"


def render(runtime_class: str | None = "gvisor") -> tuple[RenderContext, dict[str, list[dict]]]:
    run = load_fusionrun(CODE_EXAMPLE)
    spec = run.spec
    if runtime_class:
        limits = spec.scoring.code_execution.model_copy(update={"runtime_class_name": runtime_class})
        spec = spec.model_copy(update={"scoring": spec.scoring.model_copy(update={"code_execution": limits})})
    ctx = RenderContext(run.name, "team-a", "0b6e1c1e-0000-4000-8000-000000000001", spec)
    return ctx, {t.name: build_task_children(ctx, t) for t in plan_tasks(spec)}


def test_sandbox_children_validate_and_meet_the_restricted_profile() -> None:
    ctx, children = render()
    policy, job = children["verify-code"]
    for obj in (policy, job):
        kubernetes_validate.validate(obj, "1.31", strict=True)
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["runtimeClassName"] == "gvisor"
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == ctx.spec.scoring.code_execution.sandbox_pods


def test_the_restricted_check_refuses_what_the_profile_refuses() -> None:
    _ctx, children = render()
    score_pod = children["score"][0]["spec"]["template"]["spec"]
    assert restricted_violations(score_pod)  # an ordinary stage pod does not claim the profile
    _, job = children["verify-code"]
    pod = job["spec"]["template"]["spec"]
    for breaks in (
        lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
        lambda p: p["containers"][0]["securityContext"].update(capabilities={"add": ["SYS_ADMIN"]}),
        lambda p: p.update(hostPID=True),
        lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        lambda p: p["securityContext"].update(runAsUser=0),
    ):
        import copy

        broken = copy.deepcopy(pod)
        breaks(broken)
        assert restricted_violations(broken), breaks


def test_sandbox_pods_get_no_secret_token_or_network() -> None:
    ctx, children = render(runtime_class=None)
    policy, job = children["verify-code"]
    template = job["spec"]["template"]
    pod = template["spec"]
    assert "runtimeClassName" not in pod
    assert template["metadata"]["labels"]["kubefusion.dev/sandbox"] == "true"  # the PodMonitor skips it
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert not any("secret" in v or "projected" in v for v in pod["volumes"])
    for container in [*pod["initContainers"], *pod["containers"]]:
        assert "envFrom" not in container
        assert all("secretKeyRef" not in str(e.get("valueFrom")) for e in container.get("env", []))
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    sandbox = pod["containers"][0]
    mounts = {m["name"]: m for m in sandbox["volumeMounts"]}
    assert set(mounts) == {"inbox", "scratch", "storage"}  # no run config, no whole-run storage
    assert mounts["inbox"]["readOnly"] is True
    assert "subPath" not in mounts["storage"]
    assert mounts["storage"]["subPathExpr"].endswith("/sandbox/sources/verdicts-of-8/$(JOB_COMPLETION_INDEX)")
    assert "--config" not in sandbox["command"]
    # The NetworkPolicy selects exactly these pods and allows nothing in or out.
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"] and "egress" not in policy["spec"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    other_pods = [build_job(ctx, t)["spec"]["template"] for t in plan_tasks(ctx.spec) if t.name == "score"]
    assert not selector.items() <= other_pods[0]["metadata"]["labels"].items()


def test_planner_adds_verify_code_only_for_code_datasets() -> None:
    tasks = {t.name: t for t in plan_tasks(load_fusionrun(CODE_EXAMPLE).spec)}
    verify = tasks["verify-code"]
    assert verify.sandboxed and not verify.uses_gpu
    assert verify.needs == tuple(n for n in tasks if n.startswith("sample/"))
    assert tasks["score"].needs == ("verify-code",)
    assert tasks["score"].command[-1] == "--sandbox-verdicts"
    steps = [s.name for s in local_steps(load_fusionrun(CODE_EXAMPLE).spec)]
    assert steps.index("verify code") == steps.index("score") - 1
    quickstart = plan_tasks(load_fusionrun(REPO / "examples" / "quickstart.yaml").spec)
    assert not any(t.sandboxed for t in quickstart)
    assert "--sandbox-verdicts" not in next(t for t in quickstart if t.name == "score").command


@pytest.mark.parametrize("sft_only", [False, True])
def test_wrpo_target_phase_verifies_code_unless_the_dataset_is_sft_only(sft_only: bool) -> None:
    run = load_fusionrun(REPO / "examples" / "wrpo-llama3-8b.yaml")
    code = run.spec.datasets[0].model_copy(
        update={
            "name": "code",
            "domain": "code",
            "sft_fraction": 1.0 if sft_only else 0.5,
            "fields": run.spec.datasets[0].fields.model_copy(update={"tests": "tests"}),
        }
    )
    spec = run.spec.model_copy(update={"datasets": [*run.spec.datasets, code]})
    tasks = {t.name: t for t in plan_tasks(spec)}
    assert ("verify-code-target" in tasks) is not sft_only
    assert tasks["score-target"].needs == (("sample-target",) if sft_only else ("verify-code-target",))
