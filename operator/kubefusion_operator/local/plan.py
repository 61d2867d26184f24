"""The local plan: the operator's planner tasks (planner.plan_tasks), as the commands this machine runs in order.

Pure (no processes, no files): the runner executes it, `kubefusion status` reads it, tests check it.
Each job or training task becomes one step that runs `python -m kubefusion_operator stage ...` exactly as
the operator's pods do, and is done when its completion record (RunLayout.stage_record) exists. Server
tasks become the servers a step holds open while it runs: a sampling step its source's (one at a time on
one machine), the evaluate step one per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubefusion_operator.api import FusionRunSpec
from kubefusion_operator.planner import TaskKind, plan_tasks
from kubefusion_trainer.layout import RunLayout


@dataclass(frozen=True)
class Step:
    name: str  # what the user sees, e.g. "sample adder"
    stage: str  # the recipe stage it belongs to (stages.recipe_stages names)
    args: tuple[str, ...]  # after `kubefusion stage`, without --config
    records: tuple[str, ...]  # completion records; any one of them marks the step done
    serve: str | None = None  # a model to serve while the step runs: a source name, or "target"
    extra_args: tuple[str, ...] = field(default=())
    also_serve: tuple[str, ...] = ()  # more servers (evaluate: eval-<candidate> endpoints)

    def command(self, python: str, config_file: str) -> list[str]:
        return [
            python,
            "-m",
            "kubefusion_operator",
            "stage",
            *self.args,
            "--config",
            config_file,
            *self.extra_args,
        ]

    def done(self, layout: RunLayout) -> bool:
        return any(layout.stage_record(r).exists() for r in self.records)


# Options the local runner adds to a task's command (a cluster sets them in its pod templates).
_LOCAL_OPTIONS = {
    "sample": ("--concurrency", "{concurrency}"),
    "score": ("--device", "{device}"),
    "evaluate": ("--include-sources", "--device", "{device}"),
}
# What the user sees for a task (sample/<source> becomes "sample <source>").
_TITLES = {
    "sft": "train sft",
    "dpo": "train dpo",
    "wrpo": "train wrpo",
    "sample-target": "sample target",
    "score-target": "score target",
    "verify-code": "verify code",
    "verify-code-target": "verify code target",
    "build-wrpo": "build wrpo",
}


def _title(task_name: str) -> str:
    if task_name.startswith("sample/"):
        return "sample " + task_name.removeprefix("sample/")
    return _TITLES.get(task_name, task_name)


def local_steps(spec: FusionRunSpec, concurrency: int = 64, device: str = "cpu") -> list[Step]:
    """The run's steps, in the planner's order. The evaluate step also scores the sources (they fit here)."""
    tasks = plan_tasks(spec)
    servers = {t.name: t for t in tasks if t.kind is TaskKind.SERVER}
    steps = []
    for task in tasks:
        if task.kind is TaskKind.SERVER:
            continue
        if task.record is None:
            raise ValueError(f"planner task {task.name!r} names no completion record")
        stage_command = task.command[1] if task.command[:1] == ("stage",) else task.command[0]
        extra = tuple(
            part.format(concurrency=concurrency, device=device)
            for part in _LOCAL_OPTIONS.get(stage_command, ())
        )
        server = servers[task.server].endpoint if task.server else None
        more = tuple(
            str(servers[n].endpoint)
            for n in task.needs
            if n in servers and n != task.server and servers[n].endpoint
        )
        steps.append(
            Step(
                _title(task.name),
                task.stage,
                tuple(task.command[1:]) + extra,
                (task.record,),
                serve=server,
                also_serve=more,
            )
        )
    return steps
