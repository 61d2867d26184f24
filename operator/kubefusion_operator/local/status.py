"""`kubefusion status runs/<name>`: where a local run stands, from its files alone.

Reads the FusionRun the runner saved (config/fusionrun.yaml), the completion records (state/) and, when
the run finished its evaluation, the scorecard. A runner holding the run's lock means the first
unfinished step is running now.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
from pathlib import Path

import yaml

from kubefusion_operator.api import FusionRun
from kubefusion_operator.local.plan import local_steps
from kubefusion_trainer.layout import RunLayout

FUSIONRUN_LABEL = "fusionrun"


def runner_active(layout: RunLayout) -> bool:
    path = layout.root / "state" / ".runner.lock"
    if not path.exists():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def scorecard_text(layout: RunLayout) -> str | None:
    if not layout.scorecard.exists():
        return None
    from kubefusion_trainer.stages.evaluate import format_scorecard

    return format_scorecard(json.loads(layout.scorecard.read_text(encoding="utf-8")))


def status_lines(layout: RunLayout) -> list[str]:
    saved = layout.run_config_file(FUSIONRUN_LABEL)
    if not saved.exists():
        raise FileNotFoundError(
            f"{layout.root}: not a kubefusion run folder (no {saved.relative_to(layout.root)})"
        )
    run = FusionRun.model_validate(yaml.safe_load(saved.read_text(encoding="utf-8")))
    steps = local_steps(run.spec)
    active = runner_active(layout)
    lines = [f"run {run.name} ({run.spec.recipe.value}) in {layout.root}"]
    finished = 0
    first_open = True
    for step in steps:
        if step.done(layout):
            finished += 1
            from kubefusion_operator.local.runner import summarize_record

            record = next(layout.stage_record(r) for r in step.records if layout.stage_record(r).exists())
            try:
                detail = summarize_record(json.loads(record.read_text(encoding="utf-8")))
            except ValueError:
                detail = ""
            lines.append(f"  done     {step.name:<16} {detail}")
        else:
            state = "running" if active and first_open else "pending"
            first_open = False
            lines.append(f"  {state:<8} {step.name}")
    if finished == len(steps):
        overall = "finished"
    elif active:
        overall = "running"
    else:
        overall = "stopped (run the same `kubefusion run` command to resume)" if finished else "not started"
    lines.insert(1, f"  {finished}/{len(steps)} steps done: {overall}")
    if layout.report.exists():
        lines.append(f"  report: {layout.report}")
    card = scorecard_text(layout)
    if card:
        lines += ["", *card.splitlines()]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubefusion status", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="the run's folder, e.g. runs/quickstart")
    args = parser.parse_args(argv)
    try:
        print("\n".join(status_lines(RunLayout(Path(args.run_dir)))))
    except (FileNotFoundError, ValueError) as exc:
        print(f"kubefusion status: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
