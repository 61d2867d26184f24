"""Check a FusionRun document: schema, then semantic rules. Every error names its field path."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubefusion_operator.api import FusionRun
from kubefusion_operator.stages import recipe_stages


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidFusionRun(ValueError):
    def __init__(self, source: str, errors: list[FieldError]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: invalid FusionRun:\n" + "\n".join(f"  {e}" for e in errors))


def _format_loc(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


# A validator's message may start with a path relative to the model it ran on ("datasets[1].sources: ...").
_RELATIVE_PATH = re.compile(r"^(?:Value error, )?(?P<path>[A-Za-z][\w.\[\]]*): (?P<message>.*)$", re.S)


def _from_pydantic(exc: ValidationError) -> list[FieldError]:
    errors: list[FieldError] = []
    for err in exc.errors(include_url=False):
        base = _format_loc(
            tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p and p.endswith("]")))
        )
        message = err["msg"]
        match = _RELATIVE_PATH.match(message)
        if err["type"] == "value_error" and match:
            relative = match["path"]
            # The validator already named the model's own field (e.g. "storage: ...").
            if base.endswith(relative.split(".")[0].split("[")[0]):
                base = base.rsplit(".", 1)[0] if "." in base else ""
            base = f"{base}.{relative}" if base else relative
            message = match["message"]
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        errors.append(FieldError(base or "<root>", message))
    return errors


def _semantic_errors(run: FusionRun) -> list[FieldError]:
    """Rules that need the whole run (the schema cannot express them)."""
    errors: list[FieldError] = []
    for stage, hyper in run.spec.training_stages().items():
        try:
            hyper.gradient_accumulation_steps()
        except ValueError as exc:
            errors.append(FieldError(f"spec.training.{stage}.globalBatchSize", str(exc)))
    source_names = {s.name for s in run.spec.sources}
    for i, dataset in enumerate(run.spec.datasets):
        for j, existing in enumerate(dataset.existing_answers):
            if existing.source in source_names:
                errors.append(
                    FieldError(
                        f"spec.datasets[{i}].existingAnswers[{j}].source",
                        f"{existing.source!r} is also a sampled source; give existing answers their own name",
                    )
                )
        if dataset.domain == "math" and not dataset.fields.answer:
            errors.append(
                FieldError(f"spec.datasets[{i}].fields.answer", "math datasets need a gold answer column")
            )
        if dataset.domain == "code" and not dataset.fields.tests:
            errors.append(FieldError(f"spec.datasets[{i}].fields.tests", "code datasets need a tests column"))
    deadline_stages = {s.name for s in recipe_stages(run.spec)} - {"serve-sources", "serve-target"}
    for stage in sorted(set(run.spec.stage_deadline_seconds) - deadline_stages):
        errors.append(
            FieldError(
                f"spec.stageDeadlineSeconds.{stage}",
                f"not a stage of this run with a Job ({', '.join(sorted(deadline_stages))})",
            )
        )
    for i, source in enumerate(run.spec.sources):
        if run.spec.evaluation is not None and source.name.startswith("eval-"):
            errors.append(
                FieldError(
                    f"spec.sources[{i}].name",
                    "names starting with 'eval-' are taken by the evaluation candidates' servers",
                )
            )
        serving = source.serving
        if serving.max_model_len is not None and serving.max_model_len < source.sampling.max_tokens:
            errors.append(
                FieldError(
                    f"spec.sources[{i}].serving.maxModelLen",
                    f"{serving.max_model_len} is below sampling.maxTokens {source.sampling.max_tokens}",
                )
            )
    return errors


def cluster_errors(run: FusionRun) -> list[FieldError]:
    """What only a run on Kubernetes needs (the operator checks it; `kubefusion run` does not)."""
    if run.spec.storage.pvc:
        return []
    given = f"spec.storage.uri {run.spec.storage.uri!r} is" if run.spec.storage.uri else "no storage is"
    return [
        FieldError(
            "spec.storage.pvc",
            f"a run on Kubernetes needs a ReadWriteMany PersistentVolumeClaim mounted in every pod; {given} "
            "not mounted in pods (spec.storage.uri is for `kubefusion run` on one machine). "
            "See docs/install.md, 'Before the first run'.",
        )
    ]


def validate_document(doc: Any, source: str = "<input>", *, cluster: bool = False) -> FusionRun:
    """Parse and check one FusionRun document; raise InvalidFusionRun listing every problem.

    cluster=True adds the rules of a run on Kubernetes (cluster_errors)."""
    if not isinstance(doc, dict):
        raise InvalidFusionRun(
            source, [FieldError("<root>", f"expected a mapping, got {type(doc).__name__}")]
        )
    try:
        run = FusionRun.model_validate(doc)
    except ValidationError as exc:
        raise InvalidFusionRun(source, _from_pydantic(exc)) from None
    errors = _semantic_errors(run) + (cluster_errors(run) if cluster else [])
    if errors:
        raise InvalidFusionRun(source, errors)
    return run


def load_documents(path: str | Path) -> list[Any]:
    text = Path(path).read_text(encoding="utf-8")
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise InvalidFusionRun(str(path), [FieldError("<yaml>", str(exc))]) from None


def load_fusionrun(path: str | Path, *, cluster: bool = False) -> FusionRun:
    """The single FusionRun in a YAML file (cluster=True: with the rules of a run on Kubernetes)."""
    docs = load_documents(path)
    runs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "FusionRun"]
    if len(runs) != 1:
        found = "no FusionRun" if not runs else f"{len(runs)} FusionRuns"
        raise InvalidFusionRun(
            str(path), [FieldError("<file>", f"expected exactly one FusionRun, found {found}")]
        )
    return validate_document(runs[0], str(path), cluster=cluster)
