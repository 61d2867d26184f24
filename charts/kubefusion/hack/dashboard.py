#!/usr/bin/env python3
"""Write the chart's Grafana dashboard (files/dashboard.json) from the panel list below.

    python charts/kubefusion/hack/dashboard.py           # rewrite it
    python charts/kubefusion/hack/dashboard.py --check   # exit 1 when it is out of date

Queries use only metrics kubefusion exports (tests/unit/packaging/test_chart_dashboard.py checks the
names against the code): the stage pods' progress gauges (scraped through the chart's PodMonitor,
which copies the pods' kubefusion.dev/run and kubefusion.dev/stage labels onto every series as
kubefusion_dev_run and kubefusion_dev_stage) and the operator's own metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent.parent / "files" / "dashboard.json"

RUN = 'namespace=~"$namespace", kubefusion_dev_run=~"$run"'
BY_STAGE = "sum by (namespace, kubefusion_dev_run, stage)"

# (title, kind, unit, [(legend, PromQL)], width, height)
PANELS: list[tuple[str, str, str, list[tuple[str, str]], int, int]] = [
    (
        "Stage progress",
        "bargauge",
        "percent",
        [
            (
                "{{kubefusion_dev_run}} {{stage}}",
                f"100 * {BY_STAGE} (kubefusion_progress_done{{{RUN}}})"
                f" / {BY_STAGE} (kubefusion_progress_total{{{RUN}}} > 0)",
            )
        ],
        12,
        8,
    ),
    (
        "Time left at the current rate",
        "bargauge",
        "s",
        [
            (
                "{{kubefusion_dev_run}} {{stage}}",
                f"({BY_STAGE} (kubefusion_progress_total{{{RUN}}}) - {BY_STAGE} (kubefusion_progress_done{{{RUN}}}))"
                f" / ({BY_STAGE} (rate(kubefusion_progress_done{{{RUN}}}[15m])) > 0)",
            )
        ],
        12,
        8,
    ),
    (
        "Throughput (units per second)",
        "timeseries",
        "ops",
        [("{{kubefusion_dev_run}} {{stage}}", f"{BY_STAGE} (rate(kubefusion_progress_done{{{RUN}}}[5m]))")],
        12,
        8,
    ),
    # The operator (scraped through the chart's ServiceMonitor).
    (
        "FusionRuns by phase",
        "timeseries",
        "none",
        [("{{phase}}", "sum by (phase) (kubefusion_operator_runs)")],
        12,
        8,
    ),
    (
        "Stage failures and successes (per hour)",
        "timeseries",
        "none",
        [
            (
                "{{stage}} {{state}}",
                'sum by (stage, state) (increase(kubefusion_operator_stage_transitions_total{state=~"Succeeded|Failed"}[1h]))',
            )
        ],
        12,
        8,
    ),
    (
        "Stage duration (p50, p90)",
        "timeseries",
        "s",
        [
            (
                "p50 {{stage}}",
                "histogram_quantile(0.5, sum by (le, stage) (rate(kubefusion_operator_stage_duration_seconds_bucket[6h])))",
            ),
            (
                "p90 {{stage}}",
                "histogram_quantile(0.9, sum by (le, stage) (rate(kubefusion_operator_stage_duration_seconds_bucket[6h])))",
            ),
        ],
        12,
        8,
    ),
    (
        "Work done by running runs",
        "timeseries",
        "short",
        [("{{kind}}", "sum by (kind) (kubefusion_operator_work_items)")],
        12,
        8,
    ),
    (
        "Reconciles and errors (per second)",
        "timeseries",
        "ops",
        [
            ("reconciles", "sum(rate(kubefusion_operator_reconciles_total[5m]))"),
            ("errors {{kind}}", "sum by (kind) (rate(kubefusion_operator_reconcile_errors_total[5m]))"),
        ],
        12,
        8,
    ),
    (
        "Children created (per hour)",
        "timeseries",
        "none",
        [("{{kind}}", "sum by (kind) (increase(kubefusion_operator_children_created_total[1h]))")],
        12,
        8,
    ),
    (
        "Stage pods up",
        "timeseries",
        "none",
        [
            (
                "{{kubefusion_dev_run}} {{kubefusion_dev_stage}}",
                f"sum by (namespace, kubefusion_dev_run, kubefusion_dev_stage) (up{{{RUN}}})",
            )
        ],
        12,
        8,
    ),
]


def _panel(
    index: int,
    title: str,
    kind: str,
    unit: str,
    targets: list[tuple[str, str]],
    w: int,
    h: int,
    x: int,
    y: int,
) -> dict[str, Any]:
    panel: dict[str, Any] = {
        "id": index + 1,
        "title": title,
        "type": kind,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "expr": expr,
                "legendFormat": legend,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
            }
            for i, (legend, expr) in enumerate(targets)
        ],
    }
    if kind == "bargauge":
        panel["options"] = {"displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True}
        if unit == "percent":
            panel["fieldConfig"]["defaults"].update(min=0, max=100)
    return panel


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
    }


def build_dashboard() -> dict[str, Any]:
    panels = []
    x = y = 0
    for index, (title, kind, unit, targets, w, h) in enumerate(PANELS):
        if x + w > 24:
            x, y = 0, y + h
        panels.append(_panel(index, title, kind, unit, targets, w, h, x, y))
        x += w
    return {
        "uid": "kubefusion-runs",
        "title": "kubefusion",
        "description": "FusionRun stages: progress, throughput, training loss (kubefusion chart).",
        "tags": ["kubefusion"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"text": "default", "value": "default"},
                },
                _variable("namespace", "Namespace", "label_values(kubefusion_progress_total, namespace)"),
                _variable(
                    "run",
                    "FusionRun",
                    'label_values(kubefusion_progress_total{namespace=~"$namespace"}, kubefusion_dev_run)',
                ),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build_dashboard(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if files/dashboard.json is out of date")
    args = parser.parse_args(argv)
    wanted = render()
    current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
    if args.check:
        if current != wanted:
            print(f"{OUTPUT} is out of date: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        OUTPUT.write_text(wanted, encoding="utf-8")
        print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
