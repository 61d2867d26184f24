"""The chart's RBAC grants exactly what the operator does in its integration tests, and nothing broader.

The operator's integration tests (tests/integration/operator) run the real kopf operator against the
recording Kubernetes emulator; test_chart_lifecycle_rbac.py adds what those leave out (a training
PyTorchJob suspended, resumed, failed and retried; kopf's CRD discovery). packaging_rbac_recorder
records their requests (in this session, or in a subprocess run of both when they did not run here);
this test keeps the requests the operator itself sent (told apart from the tests' own kmock/kubectl
requests by their User-Agent) and checks the rendered RBAC, evaluated like the API server's RBAC
authorizer:
- cluster mode: every request of an operator serving all namespaces is allowed by the ClusterRole, and
  every granted (apiGroup, resource, verb) was requested: no unused grant, no `*`;
- namespaced mode: every request of an operator serving given namespaces is allowed by the Roles in
  those namespaces, except kopf's cluster-wide discovery (namespaces, CRDs), which the chart does not
  grant and kopf does without; and the Roles also allow the whole lifecycle the cluster-wide tests saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO_ROOT, subprocess_env

sys.path.insert(0, str(REPO_ROOT / "tests" / "unit" / "packaging"))
import packaging_rbac_recorder as recorder
from packaging_chart import NAMESPACE, find, only, render
from packaging_rbac import Access, allowed, granted_rules

# Record the emulator requests of the operator's integration tests that run before this module
# (collection imports every module before any test runs).
recorder.install()

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
OPERATOR_TESTS = REPO_ROOT / "tests" / "integration" / "operator"
LIFECYCLE = HERE / "test_chart_lifecycle_rbac.py"
# Cluster-scoped discovery kopf degrades gracefully without (kopf/_core/reactor/observation.py catches
# APIForbiddenError, warns and serves the namespaces it was given): namespaced mode grants nothing
# cluster-wide.
NAMESPACED_MODE_NOT_GRANTED = {("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions")}
# Requests the tests make themselves, playing the user (kubectl) or poking the API directly (kmock).
TEST_DRIVER_AGENTS = ("kmock/", "kubectl/")


def _ran_earlier_in_this_session(request: pytest.FixtureRequest) -> bool:
    """Did every operator integration test and the lifecycle scenario run, and pass, before this module?"""
    items = request.session.items
    first_here = min(i for i, item in enumerate(items) if Path(item.path) == Path(__file__))
    sources = {Path(item.path) for item in items[:first_here]}
    wanted = {*OPERATOR_TESTS.glob("test_*.py"), LIFECYCLE}
    deselected = bool(request.config.getoption("keyword") or request.config.getoption("markexpr"))
    return wanted <= sources and not deselected and request.session.testsfailed == 0


def _run_recorded(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Run the operator's integration tests and the lifecycle scenario in a separate pytest, recorded."""
    record = tmp_path_factory.mktemp("rbac") / "requests.jsonl"
    env = subprocess_env(KUBEFUSION_RBAC_RECORD=str(record))
    env["PYTHONPATH"] = f"{HERE}{':' + env['PYTHONPATH'] if env.get('PYTHONPATH') else ''}"
    command = [sys.executable, "-m", "pytest", str(OPERATOR_TESTS), str(LIFECYCLE), "-q"]
    command += ["-p", "packaging_rbac_recorder", "-p", "no:cacheprovider"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    # A failing operator test means a partial record: judging RBAC on it would prove nothing.
    assert result.returncode == 0, (
        f"the operator's integration tests failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    )
    return [json.loads(line) for line in record.read_text().splitlines()]


@pytest.fixture(scope="module")
def operator_requests(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    """The requests the operator (not the tests driving it) sent in the operator's integration tests.

    In a full test run those tests ran earlier in this session, recorded by install() above; when
    they did not (this file run alone, -k/-m selections, a failure), they run again in a subprocess.
    """
    if _ran_earlier_in_this_session(request):
        recorded = recorder.records()
    else:
        recorded = _run_recorded(tmp_path_factory)
    sources = (str(OPERATOR_TESTS.relative_to(REPO_ROOT)), str(LIFECYCLE.relative_to(REPO_ROOT)))
    return [
        r
        for r in recorded
        if r["test"].startswith(sources) and not r["user_agent"].startswith(TEST_DRIVER_AGENTS)
    ]


def _access(request: dict[str, Any], namespace: str | None = None) -> Access:
    resource = request["resource"] + (f"/{request['subresource']}" if request["subresource"] else "")
    return Access(request["verb"], request["api_group"], resource, namespace or request["namespace"])


def _rule_triples(rules: list[dict[str, Any]]) -> Iterator[tuple[str, str, str]]:
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    yield group, resource, verb


def _namespaced_tests(requests: list[dict[str, Any]]) -> set[str]:
    """Tests whose operator served given namespaces: kopf watched FusionRuns per namespace there."""
    return {
        r["test"]
        for r in requests
        if r["verb"] == "watch" and r["resource"] == "fusionruns" and r["namespace"] is not None
    }


def _by_mode(requests: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    namespaced_tests = _namespaced_tests(requests)
    cluster = [r for r in requests if r["test"] not in namespaced_tests]
    namespaced = [r for r in requests if r["test"] in namespaced_tests]
    return cluster, namespaced


def _granted(values: dict[str, Any]) -> tuple[list[dict[str, Any]], list]:
    objects = render(values)
    account = only(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    return objects, granted_rules(objects, account, NAMESPACE)


def test_the_operator_was_seen_at_work(operator_requests: list[dict[str, Any]]) -> None:
    agents = {r["user_agent"].split("/")[0] for r in operator_requests}
    assert "kopf" in agents, f"no request from the operator (kopf) was recorded; agents: {agents}"
    assert any(r["verb"] == "create" for r in operator_requests), "the operator created no children"
    cluster, _ = _by_mode(operator_requests)
    assert cluster, "no test ran the operator cluster-wide"


def test_cluster_mode_allows_every_request_the_operator_made(operator_requests: list[dict[str, Any]]) -> None:
    cluster, _ = _by_mode(operator_requests)
    _, granted = _granted({})
    denied = sorted({str(_access(r)) for r in cluster if not allowed(granted, _access(r))})
    assert not denied, "the chart's RBAC denies requests the operator makes:\n" + "\n".join(denied)


def test_cluster_mode_grants_nothing_the_operator_never_requested(
    operator_requests: list[dict[str, Any]],
) -> None:
    cluster, _ = _by_mode(operator_requests)
    used = {(a.api_group, a.resource, a.verb) for a in map(_access, cluster)}
    rules = only(render({}), "ClusterRole")["rules"]
    unused = sorted(set(_rule_triples(rules)) - used)
    assert not unused, f"granted but never requested by the operator (apiGroup, resource, verb): {unused}"


def _namespaced_denials(requests: list[dict[str, Any]], namespaces: list[str]) -> set[str]:
    objects, granted = _granted({"watch": {"mode": "namespaced", "namespaces": namespaces}})
    assert not find(objects, "ClusterRole") and not find(objects, "ClusterRoleBinding")
    denied = set()
    for request in requests:
        if (request["api_group"], request["resource"]) in NAMESPACED_MODE_NOT_GRANTED:
            continue
        # Serving given namespaces, the operator lists and watches in each instead of cluster-wide.
        scopes = [request["namespace"]] if request["namespace"] else namespaces
        denied |= {str(_access(request, ns)) for ns in scopes if not allowed(granted, _access(request, ns))}
    return denied


def test_namespaced_mode_allows_what_a_namespaced_operator_requested(
    operator_requests: list[dict[str, Any]],
) -> None:
    _, namespaced = _by_mode(operator_requests)
    assert namespaced, "no test ran the operator on given namespaces"
    served = sorted({r["namespace"] for r in namespaced if r["namespace"] and r["resource"] == "fusionruns"})
    cluster_scoped = {(r["api_group"], r["resource"]) for r in namespaced if r["namespace"] is None}
    # kopf's cluster-wide discovery is all a namespaced operator asks outside its namespaces.
    assert cluster_scoped <= NAMESPACED_MODE_NOT_GRANTED, cluster_scoped
    denied = _namespaced_denials(namespaced, served)
    assert not denied, "namespaced mode denies requests the operator makes:\n" + "\n".join(sorted(denied))


def test_namespaced_mode_allows_the_whole_lifecycle_in_its_namespaces(
    operator_requests: list[dict[str, Any]],
) -> None:
    """The cluster-wide tests cover more of a run (suspend, retry, delete); a Role must allow all of it."""
    cluster, _ = _by_mode(operator_requests)
    namespaces = sorted({r["namespace"] for r in cluster if r["namespace"]})
    denied = _namespaced_denials(cluster, namespaces)
    assert not denied, "namespaced mode denies requests the operator makes:\n" + "\n".join(sorted(denied))
