"""The local plan: a FusionRun's recipe stages expanded into the stage commands this machine runs, in order.

Pure (no processes, no files): the runner executes it, `kubefusion status` reads it, tests check it.
Each step runs `python -m kubefusion_operator stage ...` exactly as the operator's pods do and is done
when its completion record (RunLayout.stage_record) exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubefusion_operator.api import FusionRunSpec
from kubefusion_operator.stages import recipe_stages
from kubefusion_trainer.layout import TARGET_MODEL_NAME, RunLayout


@dataclass(frozen=True)
class Step:
    name: str  # what the user sees, e.g. "sample adder"
    stage: str  # the recipe stage it belongs to (stages.recipe_stages names)
    args: tuple[str, ...]  # after `kubefusion stage`, without --config
    records: tuple[str, ...]  # completion records; any one of them marks the step done
    serve: str | None = None  # a model to serve while the step runs: a source name, or "target"
    extra_args: tuple[str, ...] = field(default=())

    def command(self, python: str, config_file: str) -> list[str]:
        return [python, "-m", "kubefusion_operator", "stage", *self.args, "--config", config_file,
                *self.extra_args]

    def done(self, layout: RunLayout) -> bool:
        return any(layout.stage_record(r).exists() for r in self.records)


def local_steps(spec: FusionRunSpec, concurrency: int = 4, device: str = "cpu") -> list[Step]:
    """The run's steps, in the order of the operator's recipe stages."""
    steps: list[Step] = []
    for stage in recipe_stages(spec):
        name = stage.name
        if name == "prepare":
            steps.append(Step("prepare", name, ("prepare",), ("prepare",)))
        elif name == "sample":
            # One source at a time, each served only while it is sampled (the operator's maxConcurrentSources=1).
            for source in spec.sources:
                steps.append(Step(
                    f"sample {source.name}", name,
                    ("sample", "--phase", "sources", "--source", source.name, "--concurrency", str(concurrency)),
                    (f"sample-sources-{source.name}",), serve=source.name,
                ))
        elif name == "score":
            steps.append(Step("score", name, ("score", "--phase", "sources", "--device", device),
                              ("score-sources",)))
        elif name == "build":
            steps.append(Step("build", name, ("build", "--phase", "sources"), ("build-sources",)))
        elif name in ("sft", "dpo", "wrpo"):
            steps.append(Step(f"train {name}", name, ("train", "--stage", name), (f"train-{name}",)))
        elif name == "sample-target":
            steps.append(Step(
                "sample target", name,
                ("sample", "--phase", "target", "--concurrency", str(concurrency)),
                ("sample-target",), serve=TARGET_MODEL_NAME,
            ))
        elif name == "score-target":
            steps.append(Step("score target", name, ("score", "--phase", "target", "--device", device),
                              ("score-target",)))
        elif name == "build-wrpo":
            steps.append(Step("build wrpo", name, ("build", "--phase", "target"), ("build-target",)))
        elif name == "evaluate":
            # Locally the sources fit too: the scorecard shows what each source knows.
            steps.append(Step("evaluate", name, ("evaluate", "--include-sources", "--device", device),
                              ("evaluate",)))
        # serve-sources / serve-target are the servers the sample steps hold open.
    return steps
