"""The stages of each recipe, in order. Pure: the planner, `kubefusion plan` and the local runner share it."""

from __future__ import annotations

from dataclasses import dataclass

from kubefusion_operator.api import FusionRunSpec


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    uses_gpu: bool
    children: tuple[str, ...]  # the Kubernetes objects this stage creates, in words


def recipe_stages(spec: FusionRunSpec) -> list[Stage]:
    sources = ", ".join(s.name for s in spec.sources)
    stages = [
        Stage("prepare", "load, filter and normalise the prompt datasets", False, ("Job (CPU)",)),
        Stage(
            "serve-sources",
            f"serve the source models ({sources})",
            True,
            tuple(
                f"Deployment + Service (vLLM, {s.serving.gpus} GPU x {s.serving.replicas}) for {s.name}"
                for s in spec.sources
            ),
        ),
        Stage("sample", "sample N answers per prompt from every source", False, ("Indexed Job (CPU)",)),
        Stage(
            "score",
            "score answers: reward model, math answers, code tests",
            True,
            ("Job (reward model GPU)",),
        ),
        Stage("build", "build the SFT data and preference pairs", False, ("Job (CPU)",)),
        Stage("sft", "supervised fine-tuning of the target", True, ("PyTorchJob (DeepSpeed)",)),
    ]
    if spec.recipe == "wrpo":
        stages += [
            Stage(
                "serve-target",
                "serve the SFT target",
                True,
                ("Deployment + Service (vLLM) for the SFT target",),
            ),
            Stage(
                "sample-target",
                "sample the SFT target on the preference prompts",
                False,
                ("Indexed Job (CPU)",),
            ),
            Stage("score-target", "score the target's answers", True, ("Job (reward model GPU)",)),
            Stage("build-wrpo", "build WRPO quadruples", False, ("Job (CPU)",)),
            Stage("wrpo", "weighted-reward preference optimisation", True, ("PyTorchJob (DeepSpeed)",)),
        ]
    else:
        stages.append(
            Stage("dpo", "direct preference optimisation (FuseChat-3.0)", True, ("PyTorchJob (DeepSpeed)",))
        )
    if spec.evaluation is not None:
        stages.append(
            Stage(
                "evaluate",
                "scorecard: fused vs original target on held-out prompts",
                True,
                ("Deployment + Service (vLLM) per candidate (original, sft, dpo/wrpo)", "Job"),
            )
        )
    return stages
