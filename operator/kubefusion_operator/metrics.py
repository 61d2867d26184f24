"""The operator's own Prometheus metrics, on /metrics (`kubefusion operator --metrics-port`).

Label values come from fixed sets (conditions, recipe stage names, error kinds), never from run
names, so cardinality stays bounded however many runs there are.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PHASES = ("Progressing", "Suspended", "Succeeded", "Failed")
WORK_KINDS = ("prompts", "samples", "scored", "pairs")
# Stages take minutes to days.
DURATION_BUCKETS = (10, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600, 72 * 3600)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runs = Gauge(
            "kubefusion_operator_runs",
            "FusionRuns by phase (the condition that is True)",
            ["phase"],
            registry=r,
        )
        self.transitions = Counter(
            "kubefusion_operator_stage_transitions", "Stage state changes", ["stage", "state"], registry=r
        )
        self.durations = Histogram(
            "kubefusion_operator_stage_duration_seconds",
            "Wall-clock time of finished stages",
            ["stage"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.work = Gauge(
            "kubefusion_operator_work_items",
            "Work done by the runs this operator knows: prompts prepared, answers sampled, "
            "answers scored, pairs built",
            ["kind"],
            registry=r,
        )
        self.reconciles = Counter("kubefusion_operator_reconciles", "Reconciles run", registry=r)
        self.errors = Counter(
            "kubefusion_operator_reconcile_errors", "Reconciles that raised", ["kind"], registry=r
        )
        self.children_created = Counter(
            "kubefusion_operator_children_created", "Child objects created", ["kind"], registry=r
        )
        self._phase_by_run: dict[str, str] = {}
        self._work_by_run: dict[str, dict[str, int]] = {}
        for phase in PHASES:
            self.runs.labels(phase).set(0)
        for kind in WORK_KINDS:
            self.work.labels(kind).set(0)

    def observe_run(self, key: str, phase: str, work: dict[str, int]) -> None:
        self._phase_by_run[key] = phase
        self._work_by_run[key] = work
        self._refresh()

    def forget_run(self, key: str) -> None:
        self._phase_by_run.pop(key, None)
        self._work_by_run.pop(key, None)
        self._refresh()

    def _refresh(self) -> None:
        for phase in PHASES:
            self.runs.labels(phase).set(sum(1 for p in self._phase_by_run.values() if p == phase))
        for kind in WORK_KINDS:
            self.work.labels(kind).set(sum(w.get(kind, 0) for w in self._work_by_run.values()))
