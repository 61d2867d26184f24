"""The `kubefusion` command. Light commands live here; heavy ones load their module only when called."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from kubefusion_operator.validation import InvalidFusionRun, load_fusionrun

# Commands implemented elsewhere: name -> (module, help). Each module has main(argv) -> int.
DELEGATED = {
    "stage": ("kubefusion_trainer.cli", "run one stage of a run (prepare, sample, score, build, train)"),
    "operator": ("kubefusion_operator.main", "start the kopf operator for FusionRuns"),
    "run": ("kubefusion_operator.local.cli", "run a FusionRun on this machine, no cluster"),
    "status": ("kubefusion_operator.local.status", "print where a local run stands"),
    "demo": ("kubefusion_operator.local.demo", "build the quickstart's tiny models and data"),
}
# Commands that train or sample on this machine: one set of CPU kernels makes a seed's world the same on
# every x86 machine (cpu_kernels.py).
PINNED_KERNELS = ("demo", "run")


def _validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.file:
        try:
            run = load_fusionrun(path, cluster=args.cluster)
        except InvalidFusionRun as exc:
            print(exc, file=sys.stderr)
            failed += 1
        except OSError as exc:
            print(f"{path}: {exc.strerror}", file=sys.stderr)
            failed += 1
        else:
            print(f"{path}: valid FusionRun {run.name!r} (recipe {run.spec.recipe.value})")
    return 1 if failed else 0


def _plan(args: argparse.Namespace) -> int:
    from kubefusion_operator.estimate import plan_work
    from kubefusion_operator.plan_text import format_plan
    from kubefusion_operator.stages import recipe_stages

    try:
        run = load_fusionrun(args.file)
    except InvalidFusionRun as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"FusionRun {run.name}")
    print(format_plan(run.spec, recipe_stages(run.spec), plan_work(run.spec, args.gpu)))
    return 0


def _crd(args: argparse.Namespace) -> int:
    from kubefusion_operator.crd import render_crd
    from kubefusion_operator.reference import render_reference

    text = render_reference() if args.reference else render_crd()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubefusion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check FusionRun files: schema and semantic rules")
    validate.add_argument(
        "-f", "--file", action="append", required=True, help="a FusionRun YAML (repeatable)"
    )
    validate.add_argument(
        "--cluster",
        action="store_true",
        help="also check what a run on Kubernetes needs (spec.storage.pvc), as the operator does",
    )
    validate.set_defaults(func=_validate)

    plan = sub.add_parser(
        "plan", help="print a run's stages, children, work counts, GPU-hours and wall-clock estimate"
    )
    plan.add_argument("-f", "--file", required=True, help="a FusionRun YAML")
    plan.add_argument(
        "--gpu", choices=["h100", "a100"], default="h100", help="GPU type the estimate assumes (default h100)"
    )
    plan.set_defaults(func=_plan)

    crd = sub.add_parser("crd", help="print the FusionRun CRD generated from the API models")
    crd.add_argument("-o", "--output", help="write to this file instead of stdout")
    crd.add_argument("--reference", action="store_true", help="print the field reference (Markdown) instead")
    crd.set_defaults(func=_crd)

    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PINNED_KERNELS:
        from kubefusion_operator.local.cpu_kernels import cpu_flags, pin_cpu_kernels

        pin_cpu_kernels(os.environ, cpu_flags())  # before anything imports torch
    if argv and argv[0] in DELEGATED:
        module_name = DELEGATED[argv[0]][0]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            print(f"kubefusion {argv[0]}: unavailable ({exc}); install the matching extra", file=sys.stderr)
            return 2
        return int(module.main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
