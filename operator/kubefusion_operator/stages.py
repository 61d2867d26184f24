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


TRAINING_CHILDREN = {
    "trainjob": "TrainJob (Kubeflow Trainer v2)",
    "pytorchjob": "PyTorchJob (training operator v1)",
    "auto": "TrainJob, or a PyTorchJob where Kubeflow Trainer v2 is not installed (auto)",
}


def training_child(spec: FusionRunSpec, stage: str) -> str:
    """What a training stage creates, in words: the backend (spec.training.backend) and its size."""
    res = spec.training_stages()[stage].resources
    gpus = f"{res.gpus_per_node} GPU" if res.gpus_per_node else "CPU"
    deepspeed = f"DeepSpeed ZeRO-{res.zero_stage}" if res.zero_stage else "no DeepSpeed"
    return f"{TRAINING_CHILDREN[spec.training.backend]}: {res.nodes} node(s) x {gpus}, {deepspeed}"


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
        *_verify_code(spec, "sources"),
        Stage(
            "score",
            "score answers: reward model, math answers, code tests",
            True,
            ("Job (reward model GPU)",),
        ),
        Stage("build", "build the SFT data and preference pairs", False, ("Job (CPU)",)),
        Stage("sft", "supervised fine-tuning of the target", True, (training_child(spec, "sft"),)),
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
            *_verify_code(spec, "target"),
            Stage("score-target", "score the target's answers", True, ("Job (reward model GPU)",)),
            Stage("build-wrpo", "build WRPO quadruples", False, ("Job (CPU)",)),
            Stage("wrpo", "weighted-reward preference optimisation", True, (training_child(spec, "wrpo"),)),
        ]
    elif "dpo" in spec.training_stages():  # a fusechat3 run without spec.training.dpo stops after SFT
        stages.append(
            Stage(
                "dpo", "direct preference optimisation (FuseChat-3.0)", True, (training_child(spec, "dpo"),)
            )
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


def has_code(spec: FusionRunSpec, phase: str) -> bool:
    """Whether a phase scores code answers (target phase: datasets not sftOnly)."""
    return any(d.domain == "code" and not (phase == "target" and d.sft_only) for d in spec.datasets)


def _verify_code(spec: FusionRunSpec, phase: str) -> list[Stage]:
    """The code-answer sandbox stage of a phase, when it has code datasets."""
    if not has_code(spec, phase):
        return []
    name = "verify-code" if phase == "sources" else "verify-code-target"
    children = ("Indexed Job of sandbox pods (CPU, restricted)", "NetworkPolicy (deny all)")
    return [Stage(name, "run code answers against their tests in sandbox pods", False, children)]
