"""The Dockerfiles, checked statically (no Docker engine here): bases, users, extras, pins, build context."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from packaging_chart import REPO_ROOT

IMAGES = REPO_ROOT / "images"
OPERATOR = IMAGES / "operator.Dockerfile"
TRAINER = IMAGES / "trainer.Dockerfile"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
EXTRAS = {
    name: [Requirement(r) for r in reqs]
    for name, reqs in PYPROJECT["project"]["optional-dependencies"].items()
}


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.global_args.get(m[1] or m[2], m[0]), text)


def parse(path: Path) -> Dockerfile:
    """Instructions per build stage; continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))
    )
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in filter(None, (ln.strip() for ln in text.splitlines())):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            stages.append(Stage(base=rest.split()[0]))
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        else:
            raise AssertionError(f"{path.name}: {keyword} before the first FROM")
    return Dockerfile(args, stages)


def _pinned_requirements(dockerfile: Dockerfile) -> list[Requirement]:
    """Every `name==version` a RUN line installs or constrains."""
    pins = []
    for stage in dockerfile.stages:
        for run in stage.all("RUN"):
            for token in re.findall(r"""["']?([A-Za-z0-9_.\-\[\]]+==[^\s"'>]+)""", dockerfile.expand(run)):
                pins.append(Requirement(token))
    return pins


def _project_spec(name: str) -> SpecifierSet:
    specs = [
        r.specifier
        for reqs in EXTRAS.values()
        for r in reqs
        if r.name.lower() == name.lower() and r.specifier
    ]
    assert specs, f"{name} is pinned in an image but not in pyproject.toml"
    return specs[0]


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_images_run_as_a_numeric_non_root_user(path: Path) -> None:
    users = parse(path).final.all("USER")
    assert users, f"{path.name}: the final stage has no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{path.name}: USER {users[-1]} must be a numeric non-root id"
    assert int(uid) == 65532  # the chart's podSecurityContext.runAsUser


def test_the_trainer_images_writable_dirs_belong_to_group_0_for_random_uids() -> None:
    """OpenShift runs pods as a random uid with gid 0: whatever the image lets its user write, group 0
    may write too (the operator also mounts /tmp and the model cache, see render/pods.py)."""
    text = TRAINER.read_text()
    runs = " ".join(parse(TRAINER).final.all("RUN"))
    assert "chown -R 65532:0 /var/cache/kubefusion" in runs and "chmod -R g=u /var/cache/kubefusion" in runs
    for env in ("HF_HOME", "TORCH_EXTENSIONS_DIR", "TRITON_CACHE_DIR"):
        assert f"{env}=/var/cache/kubefusion/" in text, env
    assert parse(TRAINER).final.all("USER")[-1] == "65532:0"


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_images_pin_every_installed_version_as_pyproject_does(path: Path) -> None:
    pins = _pinned_requirements(parse(path))
    if path == TRAINER:
        assert "torch" in {p.name for p in pins}  # the CUDA build is held to pyproject's torch
    for pin in pins:
        (version,) = [Version(s.version) for s in pin.specifier]
        assert version in _project_spec(pin.name), (
            f"{path.name} pins {pin}, pyproject has {_project_spec(pin.name)}"
        )


def _installed_extras(dockerfile: Dockerfile) -> set[str]:
    extras: set[str] = set()
    for stage in dockerfile.stages:
        for run in stage.all("RUN"):
            for group in re.findall(r"""pip install[^&;]*?["']?\.\[([\w,]+)\]""", run):
                extras.update(group.split(","))
    return extras


def test_the_operator_image_is_slim_python_with_only_the_operator_extra() -> None:
    dockerfile = parse(OPERATOR)
    for stage in dockerfile.stages:
        assert re.fullmatch(r"python:[\d.]+-slim(-\w+)?", dockerfile.expand(stage.base)), stage.base
    assert _installed_extras(dockerfile) == {"operator"}
    python = Version(dockerfile.global_args["PYTHON_VERSION"])
    assert python in SpecifierSet(PYPROJECT["project"]["requires-python"])
    operator_deps = {r.name for r in EXTRAS["operator"]}
    assert "torch" not in operator_deps  # the operator image must stay small


def test_the_trainer_image_is_cuda_pytorch_at_the_projects_torch_with_the_train_extra() -> None:
    dockerfile = parse(TRAINER)
    base = dockerfile.expand(dockerfile.final.base)
    match = re.fullmatch(r"pytorch/pytorch:(?P<torch>[\d.]+)-cuda[\d.]+-cudnn\d+-devel", base)
    assert match, f"trainer base {base} is not a CUDA devel PyTorch image"
    assert Version(match["torch"]) in _project_spec("torch")
    assert _installed_extras(dockerfile) == {"train"}
    train_deps = {r.name for r in EXTRAS["train"]}
    assert {"deepspeed", "trl", "transformers", "torch"} <= train_deps


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_images_start_the_kubefusion_command(path: Path) -> None:
    assert parse(path).final.all("ENTRYPOINT") == ['["kubefusion"]']


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore globs: `**` spans directories, `*` and `?` stay within one."""
    out = ""
    for token in re.split(r"(\*\*/?|\*|\?)", pattern):
        if token in ("**", "**/"):
            out += "(.*/)?" if token == "**/" else ".*"
        elif token == "*":
            out += "[^/]*"
        elif token == "?":
            out += "[^/]"
        else:
            out += re.escape(token)
    return re.compile(out)


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also matches everything under a match."""
    ignored = False
    parts = path.split("/")
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        regex = _glob_regex(pattern)
        if any(regex.fullmatch("/".join(parts[: i + 1])) for i in range(len(parts))):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_images_copy_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = set()
    for path in (OPERATOR, TRAINER):
        for stage in parse(path).stages:
            for args in stage.all("COPY"):
                if "--from=" not in args:
                    copied.update(s.strip("/") for s in args.split()[:-1])
    for source in copied:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not _dockerignored(source, patterns), f"COPY {source} is excluded by .dockerignore"
    assert not _dockerignored("operator/kubefusion_operator/api.py", patterns)
    for junk in (
        ".venv/bin/python",
        ".git/HEAD",
        "runs/quickstart/x",
        "tests/conftest.py",
        "charts/kubefusion/Chart.yaml",
        "operator/kubefusion_operator/__pycache__/api.cpython-311.pyc",
    ):
        assert _dockerignored(junk, patterns), f"{junk} would be sent to the Docker daemon"


def test_vllm_comes_from_its_official_image() -> None:
    from kubefusion_operator.api import ServingConfig

    assert ServingConfig().image.startswith("vllm/vllm-openai:")
    for path in (OPERATOR, TRAINER):
        dockerfile = parse(path)
        runs = " ".join(run for stage in dockerfile.stages for run in stage.all("RUN")).lower()
        assert "vllm" not in runs and "vllm" not in _installed_extras(dockerfile), path.name
