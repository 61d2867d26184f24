"""`kubefusion run -f FUSIONRUN.yaml`: the whole fusion on this machine, no cluster.

Runs the same stages as the operator, as local processes, with a model server per source while it is
sampled. Outputs go to runs/<name>/ (or spec.storage.uri). Interrupt it any time (Ctrl-C, kill): the same
command resumes and redoes nothing finished. At the end it writes runs/<name>/reports/report.md and
prints the scorecard.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kubefusion_operator.validation import InvalidFusionRun, load_fusionrun


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubefusion run", description=__doc__.split("\n")[0])
    parser.add_argument("-f", "--file", required=True, help="the FusionRun YAML")
    parser.add_argument(
        "--workdir",
        default=".",
        help="folder that relative model, dataset and storage paths are resolved against. "
        "Default: the current folder.",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="requests in flight per server (servers batch them). Default 64.",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="device for scoring and evaluation. Default cpu.",
    )
    parser.add_argument(
        "--server-deadline",
        type=float,
        default=300.0,
        help="seconds a model server may take to become healthy. Default 300.",
    )
    parser.add_argument("--no-report", action="store_true", help="skip report.md and its plots")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kubefusion_operator.local.runner import LocalRunner, RunFailed, RunLocked

    try:
        run = load_fusionrun(args.file)
    except InvalidFusionRun as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        runner = LocalRunner(
            run,
            Path(args.workdir),
            concurrency=args.concurrency,
            device=args.device,
            server_deadline_s=args.server_deadline,
            out=lambda line: print(line, flush=True),
        )
    except ValueError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    started = time.monotonic()
    try:
        runner.execute()
    except KeyboardInterrupt:
        print(f"\nrun {run.name}: interrupted; run the same command to resume", file=sys.stderr)
        return 130
    except (RunFailed, RunLocked) as exc:
        print(f"run {run.name}: {exc}", file=sys.stderr)
        print(f"run {run.name}: fix the cause and run the same command to resume", file=sys.stderr)
        return 1
    if not args.no_report:
        from kubefusion_operator.local.report import write_report

        report = write_report(runner.layout, runner.spec, run.name)
        print(f"report: {report}")
    from kubefusion_operator.local.status import scorecard_text

    card = scorecard_text(runner.layout)
    if card:
        print(
            "\nscorecard (held-out accuracy per skill; win rate = reward model prefers it over the original):"
        )
        print(card)
    print(f"run {run.name}: finished ({time.monotonic() - started:.0f}s this invocation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
