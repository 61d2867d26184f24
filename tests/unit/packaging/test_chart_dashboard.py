"""The Grafana dashboard is generated, shipped by the chart, and queries only metrics kubefusion exports."""

from __future__ import annotations

import importlib.util
import json
import re
from types import ModuleType

from packaging_chart import CHART_DIR, REPO_ROOT, VALUE_SETS, find, render

# Series Prometheus adds itself for every scrape target.
PROMETHEUS_SERIES = {"up"}
_METRIC_CTOR = re.compile(r"""\b(Gauge|Counter|Histogram|Summary|Info)\(\s*["'](kubefusion_\w+)["']""")
_SUFFIXES = {
    "Counter": ("_total",),
    "Histogram": ("_bucket", "_sum", "_count"),
    "Summary": ("_sum", "_count"),
    "Gauge": ("",),
    "Info": ("_info",),
}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "kubefusion_chart_dashboard", CHART_DIR / "hack" / "dashboard.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exported_metrics() -> set[str]:
    """Series names the code defines with prometheus_client (operator and trainer packages)."""
    names = set()
    for path in [*(REPO_ROOT / "operator").rglob("*.py"), *(REPO_ROOT / "trainer").rglob("*.py")]:
        for kind, name in _METRIC_CTOR.findall(path.read_text(encoding="utf-8")):
            base = name.removesuffix("_total") if kind == "Counter" else name
            names |= {base + suffix for suffix in _SUFFIXES[kind]}
    return names


def _exprs(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if isinstance(variable.get("query"), dict):  # label_values(<series selector>, <label>)
            exprs.append(re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"]["query"])[1])
    return exprs


PROMQL_KEYWORDS = {"and", "or", "unless", "on", "ignoring", "group_left", "group_right", "offset", "bool"}


def _metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or labels."""
    bare = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)|\{[^}]*\}|\[[^\]]*\]", " ", expr
    )
    return {
        name
        for name, call in re.findall(r"([a-zA-Z_:][\w:]*)(\s*\()?", bare)
        if not call and name not in PROMQL_KEYWORDS
    }


def test_metric_names_are_told_apart_from_labels_and_functions() -> None:
    expr = 'sum by (a_label) (rate(kubefusion_x{b_label="y"}[5m])) / on(c) max(up) > 0'
    assert _metric_names(expr) == {"kubefusion_x", "up"}


def test_the_dashboard_file_is_what_the_generator_writes() -> None:
    assert (CHART_DIR / "files" / "dashboard.json").read_text() == _generator().render(), (
        "run python charts/kubefusion/hack/dashboard.py"
    )


def test_the_chart_ships_the_dashboard_as_valid_json() -> None:
    (configmap,) = [
        c
        for c in find(render(VALUE_SETS["monitoring"]), "ConfigMap")
        if c["metadata"]["name"].endswith("-dashboard")
    ]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["kubefusion.json"])
    assert dashboard == _generator().build_dashboard()
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_every_query_uses_a_metric_kubefusion_exports() -> None:
    known = exported_metrics() | PROMETHEUS_SERIES
    assert {"kubefusion_progress_done", "kubefusion_progress_total"} <= known
    dashboard = _generator().build_dashboard()
    for expr in _exprs(dashboard):
        metrics = _metric_names(expr)
        assert metrics, f"no metric found in {expr!r}"
        assert metrics <= known, f"{expr!r} uses {sorted(metrics - known)}, which nothing exports"


def test_dashboard_labels_are_the_ones_the_pod_monitor_attaches() -> None:
    (monitor,) = find(render(VALUE_SETS["monitoring"]), "PodMonitor")
    attached = {re.sub(r"[^a-zA-Z0-9_]", "_", label) for label in monitor["spec"]["podTargetLabels"]}
    used = set()
    for expr in _exprs(_generator().build_dashboard()):
        used |= set(re.findall(r"\b(kubefusion_dev_\w+)\b", expr))
    assert used and used <= attached
